//! The `lifeboat` command line: parses arguments, sets up logging and the runtime, runs one
//! command (`lifeboat::cmd`) and maps its outcome to the documented exit codes (0 success,
//! 1 failure, 2 bad usage or configuration; wal-fetch follows PostgreSQL's restore_command
//! contract).

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use lifeboat::cmd::{self, Command, Global, LogFormat};

#[derive(Parser)]
#[command(
    name = "lifeboat",
    version,
    about = "Point-in-time recovery for PostgreSQL: WAL streaming into an encrypted, verifiable, mirrored archive"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Sealed WAL objects are multi-megabyte buffers allocated and freed on several threads.
/// glibc raises its mmap threshold after the first such free and then keeps the freed
/// blocks in per-thread arenas, which more than doubled peak RSS in the stream benchmark
/// (67 MiB vs 25 MiB). A fixed threshold returns them to the system at once.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    // Generated from the clap definitions: no configuration, logging or runtime.
    match &cli.command {
        Command::Completions(a) => return cmd::completions::run(a, Cli::command()),
        Command::Man(a) => return cmd::man::run(a, Cli::command()),
        _ => {}
    }
    init_logging(&cli.global);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(cmd::run(&cli.global, &cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.quiet {
                eprintln!("error: {:#}", f.err);
            }
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(g: &Global) {
    let level = if g.quiet {
        "warn"
    } else {
        match g.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("lifeboat={level},warn")));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match g.log_format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}
