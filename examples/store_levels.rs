//! How zstd levels trade store bytes for import CPU, per chunk class: recompresses every
//! chunk of an image at each level and prints, per class (`level_for`'s choice) and
//! level, the compressed bytes and the CPU seconds spent (one thread).
//!
//!     cargo run --release --example store_levels -- STORE IMAGE [LEVEL...]

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use warren::store::writer::{self, LEVEL_BINARY, LEVEL_PACKED, LEVEL_TEXT};
use warren::store::{Kind, Store, chunker, chunks};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, image, minus, levels @ ..] = args.as_slice() else {
        anyhow::bail!("usage: store_levels STORE IMAGE BASE|- [LEVEL[sSEARCHLOG][mMINMATCH]...]");
    };
    let levels: Vec<&str> = if levels.is_empty() {
        vec!["1", "3", "5", "6", "7", "8"]
    } else {
        levels.iter().map(String::as_str).collect()
    };
    let store = Store::open(Path::new(store))?;
    let index = store.index(image)?;
    // Only the chunks `image` adds to `minus`.
    let mut seen: HashSet<_> = match minus.as_str() {
        "-" => HashSet::new(),
        base => store.index(base)?.chunks.iter().map(|c| c.id).collect(),
    };
    // Stream spans of chunk-aligned files: a chunk starting inside one is not packed.
    let mut aligned: Vec<(u64, u64)> = index
        .records
        .iter()
        .filter_map(|r| match r.entry.kind {
            Kind::File { size } if size >= chunker::ALIGN => Some((r.offset, r.offset + size)),
            _ => None,
        })
        .collect();
    aligned.sort();
    let in_aligned = |at: u64| {
        let i = aligned.partition_point(|&(s, _)| s <= at);
        i > 0 && at < aligned[i - 1].1
    };
    let name = |l: i32| match l {
        LEVEL_PACKED => "packed small files",
        LEVEL_TEXT => "text",
        LEVEL_BINARY => "binary",
        _ => "?",
    };
    // class -> (chunks, raw bytes, level -> (compressed bytes, seconds))
    type Row<'a> = (u64, u64, BTreeMap<&'a str, (u64, f64)>);
    let mut classes: BTreeMap<&str, Row> = BTreeMap::new();
    let mut ctxs = Vec::new();
    for spec in &levels {
        ctxs.push((*spec, compressor(spec)?));
    }
    let mut at = 0u64;
    for c in &index.chunks {
        let start = at;
        at += u64::from(c.len);
        if !seen.insert(c.id) {
            continue;
        }
        let data = chunks::read(&store, &c.id, c.len, Path::new(""))?;
        let class = name(writer::level_for(&data, !in_aligned(start)));
        let row = classes.entry(class).or_default();
        row.0 += 1;
        row.1 += data.len() as u64;
        for (l, ctx) in &mut ctxs {
            let t = cpu()?;
            let z = ctx.compress(&data)?;
            let cell = row.2.entry(*l).or_default();
            cell.0 += z.len() as u64;
            cell.1 += cpu()? - t;
        }
    }
    println!("class                  chunks        MB   level: MB stored / CPU s");
    for (class, (n, raw, by_level)) in &classes {
        let cells: Vec<String> = by_level
            .iter()
            .map(|(l, (z, s))| format!("{l}: {:.2} / {s:.2}", *z as f64 / 1e6))
            .collect();
        println!(
            "{class:<20} {n:>8} {:>9.2}   {}",
            *raw as f64 / 1e6,
            cells.join("  ")
        );
    }
    Ok(())
}

/// CPU seconds this thread has used (precise, unlike getrusage's tick-based times).
fn cpu() -> std::io::Result<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// A compressor for "LEVEL[sSEARCHLOG][mMINMATCH]" (e.g. "6m4": level 6, min match 4).
fn compressor(spec: &str) -> anyhow::Result<zstd::bulk::Compressor<'static>> {
    use zstd::zstd_safe::CParameter;
    let mut parts = spec.split_inclusive(['s', 'm']);
    let level = parts
        .next()
        .unwrap_or("3")
        .trim_end_matches(['s', 'm'])
        .parse()?;
    let mut c = zstd::bulk::Compressor::new(level)?;
    let mut rest = &spec[spec.find(['s', 'm']).unwrap_or(spec.len())..];
    while let Some(kind) = rest.chars().next() {
        let end = rest[1..].find(['s', 'm']).map_or(rest.len(), |e| e + 1);
        let n: u32 = rest[1..end].parse()?;
        c.set_parameter(if kind == 's' {
            CParameter::SearchLog(n)
        } else {
            CParameter::MinMatch(n)
        })?;
        rest = &rest[end..];
    }
    Ok(c)
}
