//! How zstd levels trade store bytes for import CPU, per chunk class: recompresses every
//! chunk of an image (or only those it adds to BASE) with each spec and prints, per class
//! (packed small files, x86 ELF, bulk, text, binary) and spec, the compressed bytes and the CPU
//! seconds spent (one thread). A spec is a level plus options: `b` runs x86 ELF chunks
//! through the branch filter first; `sN mN wN hN cN tN lN` set zstd's search log, min
//! match, window log, hash log, chain log, strategy (1 fast .. 9 btultra2) and target
//! length. `GROUP_KIB=N` compresses consecutive chunks of one file together, up to N KiB
//! (what bigger chunks would give).
//!
//!     cargo run --release --example store_levels -- STORE IMAGE BASE|- [SPEC...]

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use warren::store::compress;
use warren::store::{Kind, Store, bcj, chunker};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, image, minus, levels @ ..] = args.as_slice() else {
        anyhow::bail!("usage: store_levels STORE IMAGE BASE|- [LEVEL[b][s|m|w|h|c|t|lN...]...]");
    };
    let levels: Vec<&str> = if levels.is_empty() {
        vec!["1", "3", "5", "6", "7", "8"]
    } else {
        levels.iter().map(String::as_str).collect()
    };
    let store = Store::open(Path::new(store))?;
    let index = store.index(image)?;
    let stored = store.chunks()?;
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
    // Each aligned file's class (known once its first chunk is read).
    let mut class = vec![compress::Class::File; aligned.len()];
    let span_of = |at: u64| {
        let i = aligned.partition_point(|&(s, _)| s <= at);
        (i > 0 && at < aligned[i - 1].1).then(|| i - 1)
    };
    // class -> (chunks, raw bytes, spec -> (compressed bytes, seconds))
    let mut classes: BTreeMap<&str, Row> = BTreeMap::new();
    let mut ctxs = Vec::new();
    for spec in &levels {
        let (c, bcj) = compressor(spec)?;
        ctxs.push((*spec, c, bcj));
    }
    let mut at = 0u64;
    let mut filtered = Vec::new();
    let group: usize = std::env::var("GROUP_KIB").map_or(Ok(0), |g| g.parse())? * 1024;
    let (mut group_buf, mut group_span) = (Vec::new(), None);
    let mut pending: Vec<(Vec<u8>, Option<usize>)> = Vec::new();
    // A final None flushes the last group.
    for c in index.chunks.iter().map(Some).chain([None]) {
        let Some(c) = c else {
            if let Some(prev) = group_span.take() {
                pending.push((std::mem::take(&mut group_buf), Some(prev)));
            }
            compress_all(&mut pending, &class, &mut classes, &mut ctxs, &mut filtered)?;
            break;
        };
        let start = at;
        at += u64::from(c.len);
        if !seen.insert(c.id) {
            continue;
        }
        let data = stored.read(&c.id, c.len, Path::new(""))?;
        let span = span_of(start);
        if let Some(s) = span
            && aligned[s].0 == start
        {
            class[s] = compress::file_class(&data, aligned[s].1 - aligned[s].0);
        }
        // GROUP_KIB=N: consecutive chunks of one file compressed together, up to N KiB
        // (what bigger chunks for big files would give).
        if group > 0 {
            let same = span.is_some() && span == group_span;
            if !same || group_buf.len() + data.len() > group {
                if let Some(prev) = group_span.take() {
                    pending.push((std::mem::take(&mut group_buf), Some(prev)));
                }
            }
            if span.is_none() {
                pending.push((data, None));
            } else {
                group_buf.extend_from_slice(&data);
                group_span = span;
            }
        } else {
            pending.push((data, span));
        }
        compress_all(&mut pending, &class, &mut classes, &mut ctxs, &mut filtered)?;
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

type Row<'a> = (u64, u64, BTreeMap<&'a str, (u64, f64)>);

/// Compresses each pending (bytes, aligned-file span) with every spec, into `classes`.
fn compress_all<'a>(
    pending: &mut Vec<(Vec<u8>, Option<usize>)>,
    file_class: &[compress::Class],
    classes: &mut BTreeMap<&'static str, Row<'a>>,
    ctxs: &mut [(&'a str, zstd::bulk::Compressor<'static>, bool)],
    filtered: &mut Vec<u8>,
) -> anyhow::Result<()> {
    use compress::Class;
    for (data, span) in pending.drain(..) {
        let class = span.map_or(Class::Packed, |s| file_class[s]);
        let x86 = class == Class::X86;
        let class = match class {
            Class::Packed => "packed small files",
            Class::X86 => "x86 ELF",
            Class::Bulk => "bulk",
            Class::File if compress::looks_like_text(&data) => "text",
            Class::File => "binary",
        };
        let row = classes.entry(class).or_default();
        row.0 += 1;
        row.1 += data.len() as u64;
        for (l, ctx, bcj) in ctxs.iter_mut() {
            let t = cpu()?;
            let z = if *bcj && x86 {
                filtered.clear();
                filtered.extend_from_slice(&data);
                bcj::encode(filtered);
                ctx.compress(filtered)?
            } else {
                ctx.compress(&data)?
            };
            let cell = row.2.entry(*l).or_default();
            cell.0 += z.len() as u64;
            cell.1 += cpu()? - t;
        }
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

/// A compressor for "LEVEL[b][sSEARCHLOG][mMINMATCH][wWINDOWLOG][hHASHLOG][cCHAINLOG]
/// [tSTRATEGY][lTARGETLENGTH]" (e.g. "6m4": level 6, min match 4); `b`: x86 ELF chunks go
/// through the BCJ filter first.
fn compressor(spec: &str) -> anyhow::Result<(zstd::bulk::Compressor<'static>, bool)> {
    use zstd::zstd_safe::{CParameter, Strategy};
    let bcj = spec.contains('b');
    let spec = spec.replace('b', "");
    let letters = ['s', 'm', 'w', 'h', 'c', 't', 'l'];
    let level_end = spec.find(letters).unwrap_or(spec.len());
    let level: i32 = spec[..level_end].parse()?;
    let mut c = zstd::bulk::Compressor::new(level)?;
    let mut rest = &spec[level_end..];
    while let Some(kind) = rest.chars().next() {
        let end = rest[1..].find(letters).map_or(rest.len(), |e| e + 1);
        let n: u32 = rest[1..end].parse()?;
        c.set_parameter(match kind {
            's' => CParameter::SearchLog(n),
            'm' => CParameter::MinMatch(n),
            'w' => CParameter::WindowLog(n),
            'h' => CParameter::HashLog(n),
            'c' => CParameter::ChainLog(n),
            'l' => CParameter::TargetLength(n),
            _ => CParameter::Strategy(match n {
                1 => Strategy::ZSTD_fast,
                2 => Strategy::ZSTD_dfast,
                3 => Strategy::ZSTD_greedy,
                4 => Strategy::ZSTD_lazy,
                5 => Strategy::ZSTD_lazy2,
                6 => Strategy::ZSTD_btlazy2,
                7 => Strategy::ZSTD_btopt,
                8 => Strategy::ZSTD_btultra,
                _ => Strategy::ZSTD_btultra2,
            }),
        })?;
        rest = &rest[end..];
    }
    Ok((c, bcj))
}
