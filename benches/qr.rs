//! QR rendering cost for a WhatsApp-sized payload (225 characters, version 11 at level M), and
//! the size of its SVG over many such payloads (issue #6: at most 5 KiB).
//!
//! `cargo bench --bench qr -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use qrcode::{EcLevel, QrCode};
use qrlink::qr;

#[path = "../src/qr/sample.rs"]
mod sample;
use sample::{whatsapp_like, whatsapp_link};

fn benches(c: &mut Criterion) {
    let payload = whatsapp_like();
    let svg = qr::render_svg(&payload).expect("encodable");
    let text = qr::render_text(&payload).expect("encodable");
    println!(
        "225-character payload: {} modules per side, SVG {} bytes, text {} bytes",
        qr::encode(&payload).expect("encodable").width(),
        svg.len(),
        text.len()
    );
    let mut sizes: Vec<usize> = (1..=200)
        .map(|seed| {
            qr::render_svg(&whatsapp_link(seed))
                .expect("encodable")
                .len()
        })
        .collect();
    sizes.sort_unstable();
    println!(
        "SVG of 200 WhatsApp link payloads: min {} median {} max {} bytes",
        sizes[0],
        sizes[sizes.len() / 2],
        sizes[sizes.len() - 1]
    );

    c.bench_function("encode_225", |b| b.iter(|| qr::encode(black_box(&payload))));
    c.bench_function("render_svg_225", |b| {
        b.iter(|| qr::render_svg(black_box(&payload)))
    });
    c.bench_function("render_text_225", |b| {
        b.iter(|| qr::render_text(black_box(&payload)))
    });

    // The baseline this module replaces: the same symbol from `qrcode` alone (milliseconds, so
    // fewer samples).
    let mut baseline = c.benchmark_group("baseline");
    baseline.sample_size(20);
    baseline.bench_function("qrcode_crate_encode_225", |b| {
        b.iter(|| QrCode::with_error_correction_level(black_box(&payload), EcLevel::M))
    });
    baseline.finish();
}

criterion_group!(qr_benches, benches);
criterion_main!(qr_benches);
