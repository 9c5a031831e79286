//! The `cnibridge` command line: parse it and hand each subcommand to the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};
use cnibridge::{control, serve};

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::FirewallReload(args) => match control::firewall_reload(&args.socket) {
            Ok(()) => {
                println!(
                    "cnibridge on {}: firewall rules re-applied",
                    args.socket.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Serve(args) => match serve::run(args.into()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("cnibridge: {e}");
    ExitCode::FAILURE
}
