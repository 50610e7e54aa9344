//! SSH in the guest: the keys and the server banger installs (`setup`), and the agent's
//! built-in server for images without OpenSSH (`server`: its own process, `banger-agent
//! ssh-server`, so the agent's synchronous design stays as it is).

pub mod server;
mod session;
pub mod setup;
mod sftp;
