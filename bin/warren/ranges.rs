//! `warren ranges list | alloc NAME | free NAME`: per-container uid/gid blocks.

use crate::Global;
use warren::idmap::IdRange;
use warren::idmap::alloc::{Allocator, Pool, Reservation};
use warren::idmap::range::parse_id;

#[derive(clap::Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// Show every reservation.
    List,
    /// Reserve a block for NAME (or show the one it already has).
    Alloc {
        name: String,
        /// As root: the pool to take blocks from, START+LEN (default 0x10000+0x7fff0000).
        #[arg(long)]
        pool: Option<IdRange>,
        /// As root: ids per block (default 0x10000).
        #[arg(long, value_parser = parse_id)]
        block: Option<u32>,
    },
    /// Show NAME's reservation.
    Get { name: String },
    /// Release NAME's block.
    Free { name: String },
}

pub fn run(global: &Global, command: Command) -> anyhow::Result<i32> {
    let allocator = match &command {
        Command::Alloc { pool: Some(_), .. } | Command::Alloc { block: Some(_), .. } => {
            anyhow::ensure!(
                warren::dirs::is_root(),
                "--pool and --block are for root; rootless blocks come from /etc/subuid and /etc/subgid"
            );
            let (pool, block) = match &command {
                Command::Alloc { pool, block, .. } => (*pool, *block),
                _ => (None, None),
            };
            let default = Pool::root_default();
            let pool = Pool::new(
                pool.unwrap_or(default.uids[0]),
                block.unwrap_or(default.block),
            )?;
            Allocator::open(warren::dirs::state_dir(), pool)?
        }
        Command::Alloc { .. } => Allocator::for_current_user()?,
        // Reading and freeing need no pool (and must work for a user whose subids went).
        _ => Allocator::open(warren::dirs::state_dir(), Pool::root_default())?,
    };
    match command {
        Command::List => {
            let all = allocator.list()?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_table(&all);
            }
        }
        Command::Alloc { name, .. } => show(global, &allocator.alloc(&name)?)?,
        Command::Get { name } => match allocator.get(&name)? {
            Some(r) => show(global, &r)?,
            None => anyhow::bail!("no reservation named {name:?}"),
        },
        Command::Free { name } => {
            let r = allocator.free(&name)?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("freed {} (uids {}, gids {})", r.name, r.uids, r.gids);
            }
        }
    }
    Ok(0)
}

fn show(global: &Global, r: &Reservation) -> anyhow::Result<()> {
    if global.json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print_table(std::slice::from_ref(r));
    }
    Ok(())
}

fn print_table(all: &[Reservation]) {
    let width = all.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    println!(
        "{:width$}  {:>10}  {:>10}  {:>10}",
        "NAME", "UID START", "GID START", "COUNT"
    );
    for r in all {
        let count = if r.uids.len == r.gids.len {
            format!("{:#x}", r.uids.len)
        } else {
            format!("{:#x}/{:#x}", r.uids.len, r.gids.len)
        };
        println!(
            "{:width$}  {:>10}  {:>10}  {:>10}",
            r.name,
            format!("{:#x}", r.uids.start),
            format!("{:#x}", r.gids.start),
            count
        );
    }
}
