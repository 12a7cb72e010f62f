#!/bin/sh
# Create the Object Lock bucket "lifeboat" on both stores; an existing bucket is fine.
set -u
make_bucket() { # endpoint key secret
  for _ in $(seq 1 60); do
    if AWS_ACCESS_KEY_ID="$2" AWS_SECRET_ACCESS_KEY="$3" AWS_DEFAULT_REGION=us-east-1 \
        aws --endpoint-url "$1" s3api head-bucket --bucket lifeboat >/dev/null 2>&1; then
      return 0
    fi
    if AWS_ACCESS_KEY_ID="$2" AWS_SECRET_ACCESS_KEY="$3" AWS_DEFAULT_REGION=us-east-1 \
        aws --endpoint-url "$1" s3api create-bucket --bucket lifeboat \
        --object-lock-enabled-for-bucket >/dev/null 2>&1; then
      echo "created bucket lifeboat (Object Lock) at $1"
      return 0
    fi
    sleep 1
  done
  echo "cannot create bucket lifeboat at $1" >&2
  return 1
}
make_bucket http://moto:5000 lifeboat lifeboat-demo-secret || exit 1
make_bucket http://minio:9000 lifeboat lifeboat-demo-secret || exit 1
