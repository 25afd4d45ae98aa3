//! `rpc bench codecs`: encode time, decode time and size of every codec on datasets that
//! resemble real traffic, next to the underlying library called directly, so the table shows
//! what our codec layer costs on top of it.

#[path = "../../../rpc-codecs/benches/datasets/mod.rs"]
mod datasets;

use super::report::quantile;
use crate::CliResult;
use bytes::{BufMut, BytesMut};
use clap::Args;
use datasets::ToThrift;
use rpc_core::{Codec, Message};
use std::hint::black_box;
use std::time::{Duration, Instant};
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol, TSerializable,
};

#[derive(Args)]
pub(crate) struct CodecBenchArgs {
    /// Print one JSON object per codec and dataset instead of a table.
    #[arg(long)]
    json: bool,
    /// Write a bar chart of encode and decode times to this SVG file.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// Milliseconds measured per codec, dataset, operation, side and round.
    #[arg(long, default_value_t = 25)]
    millis: u64,
    /// Rounds; each times ours and the direct call back to back (alternating which goes
    /// first), and the median of the rounds' ratios is reported.
    #[arg(long, default_value_t = 15)]
    rounds: usize,
}

/// One line of the report.
#[derive(serde::Serialize)]
struct Row {
    dataset: &'static str,
    codec: &'static str,
    bytes: usize,
    encode_ns: f64,
    decode_ns: f64,
    direct_encode_ns: f64,
    direct_decode_ns: f64,
    /// Median over rounds of ours / direct; 1.0 means no overhead.
    encode_ratio: f64,
    decode_ratio: f64,
    direct: &'static str,
}

/// Ours against the direct call: the median time of each and the median of their ratios.
struct Comparison {
    ours_ns: f64,
    direct_ns: f64,
    ratio: f64,
}

/// Nanoseconds per call of `f`, over about `budget` of calls.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Calibrate: how many calls fit in a tenth of the budget.
    let start = Instant::now();
    let mut calibration = 0u64;
    while start.elapsed() < budget / 10 {
        f();
        calibration += 1;
    }
    let iterations = (calibration * 10).max(1);
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

/// Ours and the direct call, timed back to back in each round. The ratio is taken per round
/// and then its median, so a machine that speeds up or slows down between rounds (this one is
/// shared) moves both sides of a ratio alike.
fn compare(rounds: usize, budget: Duration, mut ours: impl FnMut(), mut direct: impl FnMut()) -> Comparison {
    let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = time(budget, &mut ours);
            (x, time(budget, &mut direct))
        } else {
            let y = time(budget, &mut direct);
            (time(budget, &mut ours), y)
        };
        a.push(x);
        b.push(y);
        ratios.push(x / y);
    }
    Comparison { ours_ns: quantile(&mut a, 0.5), direct_ns: quantile(&mut b, 0.5), ratio: quantile(&mut ratios, 0.5) }
}

/// The direct calls of one dataset: prost on the hand-derived struct, serde_json, rmp-serde and
/// the code the Thrift compiler generates for Rust, on the `thrift` crate's protocols.
fn bench_dataset<T: Message + ToThrift, P: prost::Message + Default>(
    name: &'static str,
    value: &T,
    prost_value: &P,
    args: &CodecBenchArgs,
    rows: &mut Vec<Row>,
) -> CliResult {
    let budget = Duration::from_millis(args.millis);
    let generated = value.to_thrift();
    for &codec in Codec::ALL {
        let mut buf = BytesMut::new();
        codec.encode(value, &mut buf)?;
        let encoded = buf.clone().freeze();
        let mut direct_buf = BytesMut::new();
        let encode = compare(
            args.rounds,
            budget,
            || {
                buf.clear();
                codec.encode(black_box(value), &mut buf).expect("encodes");
            },
            || {
                direct_buf.clear();
                direct_encode(codec, value, prost_value, &generated, &mut direct_buf);
            },
        );
        let decode = compare(
            args.rounds,
            budget,
            || {
                black_box(codec.decode::<T>(black_box(&encoded)).expect("decodes"));
            },
            || direct_decode::<T, P, T::Generated>(codec, &encoded),
        );
        let direct = match codec {
            Codec::Protobuf => "prost (derived)",
            Codec::Json => "serde_json",
            Codec::MsgPack => "rmp-serde",
            _ => "thrift (generated)",
        };
        rows.push(Row {
            dataset: name,
            codec: codec.name(),
            bytes: encoded.len(),
            encode_ns: encode.ours_ns,
            decode_ns: decode.ours_ns,
            direct_encode_ns: encode.direct_ns,
            direct_decode_ns: decode.direct_ns,
            encode_ratio: encode.ratio,
            decode_ratio: decode.ratio,
            direct,
        });
    }
    Ok(())
}

fn direct_encode<T: Message, P: prost::Message, G: TSerializable>(
    codec: Codec,
    value: &T,
    prost_value: &P,
    generated: &G,
    buf: &mut BytesMut,
) {
    let done = match codec {
        Codec::Protobuf => prost_value.encode(buf).map_err(|e| e.to_string()),
        Codec::Json => serde_json::to_writer(buf.writer(), value).map_err(|e| e.to_string()),
        Codec::MsgPack => rmp_serde::encode::write_named(&mut buf.writer(), value).map_err(|e| e.to_string()),
        Codec::ThriftCompact => {
            generated.write_to_out_protocol(&mut TCompactOutputProtocol::new(buf.writer())).map_err(|e| e.to_string())
        }
        _ => generated
            .write_to_out_protocol(&mut TBinaryOutputProtocol::new(buf.writer(), true))
            .map_err(|e| e.to_string()),
    };
    done.expect("direct encode");
}

fn direct_decode<T: Message, P: prost::Message + Default, G: TSerializable>(codec: Codec, bytes: &[u8]) {
    match codec {
        Codec::Protobuf => drop(black_box(P::decode(bytes).expect("prost decodes"))),
        Codec::Json => drop(black_box(serde_json::from_slice::<T>(bytes).expect("serde_json decodes"))),
        Codec::MsgPack => drop(black_box(rmp_serde::from_slice::<T>(bytes).expect("rmp-serde decodes"))),
        Codec::ThriftCompact => {
            drop(black_box(G::read_from_in_protocol(&mut TCompactInputProtocol::new(bytes)).expect("decodes")))
        }
        _ => drop(black_box(G::read_from_in_protocol(&mut TBinaryInputProtocol::new(bytes, true)).expect("decodes"))),
    }
}

pub(crate) async fn run(args: CodecBenchArgs) -> CliResult {
    let mut rows = Vec::new();
    let (s, p) = datasets::small();
    bench_dataset("small", &s, &p, &args, &mut rows)?;
    let (s, p) = datasets::logs();
    bench_dataset("logs", &s, &p, &args, &mut rows)?;
    let (s, p) = datasets::mesh();
    bench_dataset("mesh", &s, &p, &args, &mut rows)?;
    let (s, p) = datasets::tree();
    bench_dataset("tree", &s, &p, &args, &mut rows)?;
    print_rows(&rows, args.json);
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&rows)).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn print_rows(rows: &[Row], json: bool) {
    if json {
        for row in rows {
            println!("{}", serde_json::to_string(row).unwrap_or_default());
        }
        return;
    }
    println!(
        "{:<6} {:<15} {:>8} {:>11} {:>11} {:>9} {:>9}  direct",
        "data", "codec", "bytes", "encode µs", "decode µs", "enc/dir", "dec/dir"
    );
    for r in rows {
        println!(
            "{:<6} {:<15} {:>8} {:>11.2} {:>11.2} {:>9.2} {:>9.2}  {}",
            r.dataset,
            r.codec,
            r.bytes,
            r.encode_ns / 1e3,
            r.decode_ns / 1e3,
            r.encode_ratio,
            r.decode_ratio,
            r.direct
        );
    }
}

/// Horizontal bars of encode and decode time, one group per dataset, each scaled to its slowest.
fn svg(rows: &[Row]) -> String {
    const BAR: f64 = 12.0;
    const LABEL: f64 = 190.0;
    const WIDTH: f64 = 420.0;
    let mut out = String::new();
    let mut y = 30.0;
    let mut body = String::new();
    let mut datasets: Vec<&str> = rows.iter().map(|r| r.dataset).collect();
    datasets.dedup();
    for dataset in datasets {
        let group: Vec<&Row> = rows.iter().filter(|r| r.dataset == dataset).collect();
        let max = group.iter().map(|r| r.encode_ns.max(r.decode_ns)).fold(1.0, f64::max);
        body.push_str(&format!(
            "<text x=\"10\" y=\"{y}\" font-weight=\"bold\">{dataset} (µs, bar scaled to the slowest)</text>\n"
        ));
        y += 8.0;
        for r in group {
            for (what, ns, color) in [("encode", r.encode_ns, "#4e79a7"), ("decode", r.decode_ns, "#f28e2b")] {
                let w = ns / max * WIDTH;
                body.push_str(&format!(
                    "<text x=\"10\" y=\"{:.0}\">{} {what}</text><rect x=\"{LABEL}\" y=\"{:.0}\" width=\"{w:.1}\" height=\"{}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.0}\">{:.2}</text>\n",
                    y + BAR - 2.0,
                    r.codec,
                    y,
                    BAR - 2.0,
                    LABEL + w + 4.0,
                    y + BAR - 2.0,
                    ns / 1e3
                ));
                y += BAR;
            }
        }
        y += 24.0;
    }
    out.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{y:.0}\" font-family=\"sans-serif\" font-size=\"10\">\n",
        LABEL + WIDTH + 60.0
    ));
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}
