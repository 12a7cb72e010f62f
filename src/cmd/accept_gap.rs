//! `lifeboat accept-gap`: the operator's decision after the streamer stopped on WAL the
//! server removed before it was archived. Records the gap in the archive (`list`,
//! `verify` and the restore planner show it), makes the replication slot usable again,
//! and lets the streamer resume after the gap. Never done automatically.

use super::{print_json, Ctx, Failure};
use crate::ingest::gap;

pub async fn run(ctx: &Ctx<'_>) -> Result<(), Failure> {
    ctx.require_for_writing()?;
    let done = gap::accept(&ctx.cfg).await?;
    if ctx.json() {
        print_json(&done)?;
        return Ok(());
    }
    if let (Some(s), true) = (&done.slot, done.slot_recreated) {
        println!("replication slot \"{s}\" created again");
    }
    match &done.gap {
        Some(g) => {
            println!(
                "recorded the WAL gap {}–{} on timeline {} in the archive ({})",
                g.from,
                g.to,
                g.timeline,
                g.key()
            );
            println!("restores cannot cross it: take a new base backup now (`lifeboat backup`), then start the streamer; it resumes at {}", g.to);
        }
        None => println!("no WAL is lost: the server still has the WAL from the archive's end; start the streamer"),
    }
    Ok(())
}
