#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/<target>/ (file names start with "seed-").

The messages follow the PostgreSQL protocol documentation (protocol-message-formats,
protocol-replication) as a PostgreSQL 14..18 walsender sends them; the object seeds are
sealed to the test recipient of fuzz/harness.rs with the zstd and age command-line tools,
framed as docs/FORMAT.md says. Run from anywhere: python3 fuzz/make_seeds.py
The fuzzer's own finds (hash-named files) are kept by scripts/fuzz.sh, not written here.
"""
import io
import os
import struct
import subprocess
import tarfile
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
RECIPIENT = "age10ujc0lf20rye9twwljsq2042nkxdxnq4pf7jjyu4xsqj4w2egussylum3f"


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def msg(tag, body=b""):
    return tag + struct.pack(">I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def row_desc(cols):
    b = struct.pack(">H", len(cols))
    for c in cols:
        b += cstr(c) + b"\0" * 18
    return msg(b"T", b)


def data_row(vals):
    b = struct.pack(">H", len(vals))
    for v in vals:
        if v is None:
            b += struct.pack(">i", -1)
        else:
            v = v.encode() if isinstance(v, str) else v
            b += struct.pack(">i", len(v)) + v
    return msg(b"D", b)


def complete(tag):
    return msg(b"C", cstr(tag))


def ready(state=b"I"):
    return msg(b"Z", state)


def error(sev, code, text, hint=None):
    b = b"S" + cstr(sev) + b"V" + cstr(sev) + b"C" + cstr(code) + b"M" + cstr(text)
    if hint:
        b += b"H" + cstr(hint)
    return msg(b"E", b + b"\0")


def xlogdata(start, wal_end, data):
    return msg(b"d", b"w" + struct.pack(">QQq", start, wal_end, 821_000_000_000_000) + data)


def keepalive(wal_end, reply):
    return msg(b"d", b"k" + struct.pack(">Qq", wal_end, 821_000_000_000_000) + bytes([reply]))


def wal_page(lsn, tli=1):
    # XLogLongPageHeaderData of a segment's first page, then a few record bytes.
    hdr = struct.pack("<HHIQI", 0xD116, 0x0002, tli, lsn, 0)
    hdr += struct.pack("<QII", 7441234567890123456, 16 * 1024 * 1024, 8192)
    return hdr + bytes(range(64))


def protocol():
    # Start-up: SCRAM, then the parameters a PostgreSQL 17 server reports.
    startup = msg(b"R", struct.pack(">I", 10) + cstr("SCRAM-SHA-256-PLUS") + cstr("SCRAM-SHA-256") + b"\0")
    startup += msg(b"R", struct.pack(">I", 11) + b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    startup += msg(b"R", struct.pack(">I", 12) + b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    startup += msg(b"R", struct.pack(">I", 0))
    for k, v in [("application_name", "lifeboat"), ("client_encoding", "UTF8"),
                 ("DateStyle", "ISO, MDY"), ("in_hot_standby", "off"), ("integer_datetimes", "on"),
                 ("server_version", "17.2"), ("standard_conforming_strings", "on"),
                 ("TimeZone", "Etc/UTC")]:
        startup += msg(b"S", cstr(k) + cstr(v))
    startup += msg(b"K", struct.pack(">II", 4242, 0x5EED1234))
    startup += ready()
    put("protocol", "startup-scram", b"\x07" + startup)
    put("protocol", "auth-md5", b"\x01" + msg(b"R", struct.pack(">I", 5) + b"\x01\x02\x03\x04"))
    put("protocol", "auth-cleartext", b"\x01" + msg(b"R", struct.pack(">I", 3)))
    put("protocol", "negotiate-version", b"\x02" + msg(b"v", struct.pack(">II", 196608, 1) + cstr("_pq_.x")))
    ident = row_desc(["systemid", "timeline", "xlogpos", "dbname"])
    ident += data_row(["7441234567890123456", "1", "0/3000148", None])
    ident += complete("IDENTIFY_SYSTEM") + ready()
    put("protocol", "identify-system", b"\x13" + ident)
    show = row_desc(["wal_segment_size"]) + data_row(["16MB"]) + complete("SHOW") + ready()
    put("protocol", "show-wal-segment-size", b"\x05" + show)
    hist = row_desc(["filename", "content"])
    hist += data_row(["00000002.history", "1\t0/5000060\tno recovery target specified\n"])
    hist += complete("TIMELINE_HISTORY") + ready()
    put("protocol", "timeline-history", b"\x21" + hist)
    slot = row_desc(["slot_type", "restart_lsn", "restart_tli"])
    slot += data_row(["physical", "0/3000000", "1"]) + complete("READ_REPLICATION_SLOT") + ready()
    put("protocol", "read-replication-slot", b"\x30" + slot)
    # START_REPLICATION: CopyBoth, WAL, keepalives, end of timeline with the next one.
    stream = msg(b"W", b"\0\0\0")
    stream += xlogdata(0x3000000, 0x3000148, wal_page(0x3000000))
    stream += keepalive(0x3000148, 0)
    stream += xlogdata(0x3000060, 0x3000148, bytes(range(200)))
    stream += keepalive(0x3000148, 1)
    stream += msg(b"c")
    stream += row_desc(["next_tli", "next_tli_startpos"]) + data_row(["2", "0/5000060"])
    stream += complete("SELECT") + complete("START_STREAMING") + ready()
    put("protocol", "start-replication", b"\x4b" + stream)
    put("protocol", "server-shutdown", b"\x11" + msg(b"W", b"\0\0\0") + keepalive(0x4000000, 0) + complete("COPY 0"))
    put("protocol", "timeline-ended", b"\x09" + row_desc(["next_tli", "next_tli_startpos"]) + data_row(["3", "0/7000000"]) + complete("START_STREAMING") + ready())
    put("protocol", "error-slot-missing", b"\x03" + error("ERROR", "42704", 'replication slot "lifeboat" does not exist') + ready())
    put("protocol", "error-wal-removed", b"\x06" + error("ERROR", "58P01", "requested WAL segment 000000010000000000000001 has already been removed"))
    put("protocol", "fatal-hba", b"\x08" + error("FATAL", "28000", 'no pg_hba.conf entry for replication connection from host "10.0.0.5", user "lifeboat", no encryption'))
    put("protocol", "notice", b"\x0a" + msg(b"N", b"SNOTICE\0VNOTICE\0C00000\0Mall required WAL segments have been archived\0\0"))
    put("protocol", "empty-query", b"\x01" + msg(b"I") + ready(b"T"))


def tar_bytes(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files:
            if data is None:
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                info.mode = 0o700
                t.addfile(info)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o600
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def basebackup():
    base = [("PG_VERSION", b"17\n"), ("global", None), ("global/pg_control", b"\x01" * 64),
            ("backup_label", b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-24 08:30:12 UTC\nLABEL: lifeboat\nSTART TIMELINE: 1\n"),
            ("tablespace_map", b"16384 /ts/one\n")]
    ts = [("PG_17_202406281", None), ("PG_17_202406281/5", None)]
    manifest = b'{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [\n{ "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2026-11-24 08:30:12 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "1a2b3c4d" }\n],\n"WAL-Ranges": [\n{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }\n],\n"Manifest-Checksum": "00"}\n'

    def header(with_cc):
        h = row_desc(["recptr", "tli"]) + data_row(["0/2000028", "1"])
        if with_cc:
            h += complete("SELECT")
        h += row_desc(["spcoid", "spclocation", "size"])
        h += data_row(["16384", "/ts/one", "10"]) + data_row([None, None, "30000"])
        return h + complete("SELECT")

    trailer = row_desc(["recptr", "tli"]) + data_row(["0/2000100", "1"]) + complete("SELECT") + complete("BASE_BACKUP") + ready()

    def chunks(b, n=512):
        return [b[i:i + n] for i in range(0, len(b), n)]

    # PostgreSQL 14: one CopyOut per tablespace (raw tar without end blocks), then the manifest.
    w = header(True)
    for files in (ts, base):
        # PostgreSQL 14 sends its tars without the end blocks (nor tarfile's record padding).
        raw = tar_bytes(files)
        raw = raw[: len(raw.rstrip(b"\0")) + (-len(raw.rstrip(b"\0")) % 512)]
        w += msg(b"H", b"\0\0\0")
        for c in chunks(raw):
            w += msg(b"d", c)
        w += msg(b"c")
    w += msg(b"H", b"\0\0\0") + msg(b"d", manifest) + msg(b"c") + trailer
    put("basebackup", "pg14-two-tablespaces", b"\x00" + w)
    # PostgreSQL 15+: one CopyOut with typed messages.
    w = header(False) + msg(b"H", b"\0\0\0")
    w += msg(b"d", b"n" + cstr("16384.tar") + cstr("/ts/one"))
    for c in chunks(tar_bytes(ts)):
        w += msg(b"d", b"d" + c)
    w += msg(b"d", b"p" + struct.pack(">Q", 4096))
    w += msg(b"d", b"n" + cstr("base.tar") + cstr(""))
    for c in chunks(tar_bytes(base)):
        w += msg(b"d", b"d" + c)
    w += msg(b"d", b"p" + struct.pack(">Q", 20480))
    w += msg(b"d", b"m") + msg(b"d", b"d" + manifest) + msg(b"c") + trailer
    put("basebackup", "pg17-typed-copy", b"\x05" + w)
    put("basebackup", "pg16-error-max-wal-senders", b"\x03" + error("ERROR", "53300", "number of requested standby connections exceeds max_wal_senders (currently 1)"))
    put("basebackup", "pg15-header-only", b"\x01" + header(True) + msg(b"H", b"\0\0\0") + msg(b"d", b"n" + cstr("base.tar") + cstr("")))


def object_seeds():
    def sealed(plain, level=3):
        z = subprocess.run(["zstd", "-q", "-c", f"-{level}"], input=plain, capture_output=True, check=True).stdout
        a = subprocess.run(["age", "-r", RECIPIENT], input=z, capture_output=True, check=True).stdout
        v = b"LBOBJ\x01\0\0" + a + struct.pack(">Q", len(plain))
        return v + struct.pack(">I", zlib.crc32(v)) + b"LBT1", a, z

    obj, age_body, z = sealed(b"")
    put("object", "stored-empty", b"\x00" + obj)
    wal = wal_page(0x3000000) + bytes(8192 - 100)
    obj, age_body, z = sealed(wal)
    put("object", "stored-wal-page", b"\x00" + obj)
    put("object", "age-body-wal-page", b"\x01" + struct.pack(">Q", len(wal)) + age_body)
    put("object", "zstd-frame-wal-page", b"\x02" + struct.pack(">Q", len(wal)) + z)
    obj, age_body, z = sealed(b"backup_manifest " * 40, 1)
    put("object", "stored-text", b"\x00" + obj)
    put("object", "stored-bad-crc", b"\x00" + obj[:40] + bytes([obj[40] ^ 1]) + obj[41:])
    put("object", "stored-truncated", b"\x00" + obj[: len(obj) - 3])
    put("object", "plain-round-trip", b"\x03" + b"0/3000148 " * 20)


def wal_inventory():
    seg16 = b"\x04"  # 1 << (20 + 4): 16 MiB
    keys = [
        "archive.json",
        "wal/00000001/000000010000000000000001.seg",
        "wal/00000001/000000010000000000000002.seg",
        "wal/00000001/000000010000000000000003.00000000-00001000.part",
        "wal/00000001/000000010000000000000003.00000800-00001800.part",
        "wal/00000001/000000010000000000000003.00001000-00003000.part",
        "wal/00000001/000000010000000000000005.seg",
        "wal/00000002/000000020000000000000005.00000000-00000010.part",
        "history/00000002.history.00000001-0000000005000060",
        "backups/20261124T083012Z/base.tar.000000",
        "backups/20261124T083012Z/backup_manifest",
        "backups/20261124T083012Z/backup.json",
    ]
    put("wal_inventory", "listing-16mib", seg16 + "\n".join(keys).encode())
    put("wal_inventory", "listing-restart-overlap", seg16 + "\n".join([
        "wal/00000001/00000001000000010000002A.00000000-00800000.part",
        "wal/00000001/00000001000000010000002A.008CD158-00A00000.part",
        "wal/00000001/00000001000000010000002A.00800000-00C00000.part",
        "wal/00000001/00000001000000010000002A.00A00000-00C00000.part",
        "wal/00000001/00000001000000010000002A.seg",
    ]).encode())
    put("wal_inventory", "listing-1gib", b"\x0a" + "\n".join([
        "wal/00000003/000000030000000100000003.seg",
        "wal/00000003/000000030000000200000000.00000000-20000000.part",
        "history/00000003.history.00000002-0000000103000000",
    ]).encode())
    put("wal_inventory", "listing-1mib-foreign", b"\x00" + "\n".join([
        "wal/00000001/0000000100000000000000FF.seg",
        "wal/00000001/000000010000000000000100.seg",
        "wal/00000001/junk",
        "wal/0000000G/000000010000000000000001.seg",
        "wal/00000001/000000010000000000000001.seg.tmp",
    ]).encode())


def wal_names():
    put("wal_names", "lsns", "16/B374D848\n0/0\nFFFFFFFF/FFFFFFFF\n1/2A000028\n")
    put("wal_names", "segment-names", "00000001000000010000002A\n0000000A.history\n000000020000000000000005.partial\n")
    put("wal_names", "history", "1\t0/3000000\tno recovery target specified\n\n# comment\n2\t0/5000060\tbefore 2026-11-24 08:30:12.000000+00\n")
    put("wal_names", "seg-sizes", "16MB\n1GB\n1024kB\n16777216\n")
    put("wal_names", "timelines", "1\n4294967295\n0\n")


def conninfo():
    for name, s in [
        ("kv-basic", "host=127.0.0.1 port=5432 user=lifeboat dbname=replication sslmode=prefer"),
        ("kv-quoted", "host=db1 user=x password='a b\\'c' application_name='lifeboat stream'"),
        ("kv-multihost", "host=db1,db2,/var/run/postgresql port=5432,5433,5434 hostaddr=10.0.0.1,10.0.0.2, target_session_attrs=any connect_timeout=10"),
        ("kv-tls", "host=db.example.com sslmode=verify-full sslrootcert=/etc/ssl/root.crt sslcert=/etc/lifeboat/client.crt sslkey=/etc/lifeboat/client.key channel_binding=require"),
        ("kv-keepalives", "host=db keepalives=1 keepalives_idle=30 keepalives_interval=10 keepalives_count=3 options='-c statement_timeout=0'"),
        ("uri-basic", "postgresql://lifeboat:s3cret@db.example.com:5432/postgres?sslmode=require&application_name=lifeboat"),
        ("uri-multihost", "postgres://u@host1:5432,host2:5433,[::1]:5434/db?connect_timeout=5"),
        ("uri-socket", "postgresql://%2Fvar%2Frun%2Fpostgresql/db?user=postgres"),
        ("uri-ipv6", "postgresql://[2001:db8::1234]/database?sslrootcert=system&sslmode=verify-full"),
        ("kv-bad", "host=db port=notaport sslmode=sometimes"),
        ("uri-bad", "postgresql://user:pw@host:99999/db?unknown=1"),
        ("empty", ""),
    ]:
        put("conninfo", name, s)


def config():
    put("config", "minimal", """
[postgres]
conninfo = "host=127.0.0.1 user=lifeboat"

[encryption]
recipients = ["age10ujc0lf20rye9twwljsq2042nkxdxnq4pf7jjyu4xsqj4w2egussylum3f"]

[[storage]]
name = "local"
url = "file:///var/lib/lifeboat/archive"
""")
    put("config", "full", """
[postgres]
conninfo = "postgresql://lifeboat@db.example.com/postgres?sslmode=verify-full"
slot = "lifeboat_main"
create_slot = false

[encryption]
recipients = ["age10ujc0lf20rye9twwljsq2042nkxdxnq4pf7jjyu4xsqj4w2egussylum3f"]
identity_file = "/etc/lifeboat/identity.txt"

[wal]
max_delay = "500ms"
spool_dir = "/var/lib/lifeboat/spool"
compression_level = 3
status_interval = "10s"

[spool]
max_size = "8GiB"

[backup]
part_size = "64MiB"
max_rate = 102400
compression_level = 3

[[storage]]
name = "local"
url = "file:///var/lib/lifeboat/archive"

[[storage]]
name = "offsite"
url = "s3://lifeboat-archive/prod"
endpoint = "https://s3.eu-central-1.amazonaws.com"
region = "eu-central-1"
force_path_style = true
access_key_id_env = "LIFEBOAT_S3_KEY"
secret_access_key_env = "LIFEBOAT_S3_SECRET"
object_lock = { mode = "governance", days = 30 }
request_checksum_calculation = "when_required"
response_checksum_validation = "when_supported"

[[storage]]
name = "second"
url = "s3://other-bucket"
profile = "backup"

[retention]
keep_backups = 7
""")
    put("config", "bad-unknown-key", "[wal]\nmax_dealy = \"1s\"\n")
    put("config", "bad-values", "[wal]\ncompression_level = 40\n[backup]\npart_size = \"12 furlongs\"\n[postgres]\nslot = \"Bad-Slot\"\n")
    put("config", "empty", "")


if __name__ == "__main__":
    protocol()
    basebackup()
    object_seeds()
    wal_inventory()
    wal_names()
    conninfo()
    config()
