//! `warren image ...`

use crate::Global;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Not built yet.
    #[command(name = "image-todo", hide = true)]
    Todo,
}

pub fn run(_global: &Global, _command: Command) -> anyhow::Result<i32> {
    anyhow::bail!("not built yet")
}
