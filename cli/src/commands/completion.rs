use clap::CommandFactory;
use protocol::Error;

use crate::args::Cli;

pub fn run(shell: clap_complete::Shell) -> Result<(), Error> {
    clap_complete::generate(shell, &mut Cli::command(), "banger", &mut std::io::stdout());
    Ok(())
}
