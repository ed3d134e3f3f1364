//! The rendered QR codes scan: each SVG is rasterized with resvg and each text rendering is
//! turned back into pixels, then decoded with rqrr, and must give back the exact payload. And
//! the symbols are the `qrcode` crate's, module for module, at every version.
//!
//! The scanning crate (`test-support/qr-scan`, with resvg and rqrr) and `qrcode` are built
//! optimized even in the debug profile (Cargo.toml), or the 2,000-payload round trip alone would
//! take minutes (benches/README.md, "QR tests").

#[path = "../../src/qr/sample.rs"]
mod sample;

use crate::common::scan::{scan_svg, scan_text};
use qrcode::{Color, EcLevel, Version};
use qrlink::qr::{self, QUIET_ZONE, QrError};
use sample::base64_noise;

/// A WhatsApp-like payload: `2@`, a reference, then three comma-separated base64 keys, 225
/// characters in all.
fn whatsapp_like() -> String {
    let mut payload = String::from("2@");
    payload.push_str(&base64_noise(0x2545_f491_4f6c_dd1d, 88));
    for seed in [1, 2, 3] {
        payload.push(',');
        payload.push_str(&base64_noise(seed, 44));
    }
    payload.truncate(225);
    assert_eq!(payload.len(), 225);
    payload
}

fn telegram() -> String {
    format!(
        "tg://login?token={}",
        base64_noise(7, 43).replace(['+', '/'], "_")
    )
}

fn google_messages() -> String {
    format!(
        "https://support.google.com/messages/?p=web_computer#?c={}",
        base64_noise(11, 140)
    )
}

fn demo() -> String {
    "http://127.0.0.1:3000/simulator/scan/acc_7Hq2mZ9xKp4Lw1Ns?c=Yb3dQ8vRt6Jk0PfWs5Xe".to_owned()
}

/// Decodes the single QR code in a greyscale image.
fn assert_svg_round_trips(payload: &str) {
    let svg = qr::render_svg(payload).expect("the payload is encodable");
    assert_eq!(scan_svg(&svg), payload, "the SVG decoded to something else");
}

fn assert_text_round_trips(payload: &str) {
    let text = qr::render_text(payload).expect("the payload is encodable");
    assert_eq!(
        scan_text(&text),
        payload,
        "the text decoded to something else"
    );
}

#[test]
fn a_whatsapp_svg_scans_back_to_its_225_characters() {
    assert_svg_round_trips(&whatsapp_like());
}

#[test]
fn a_telegram_login_svg_scans_back_to_its_url() {
    assert_svg_round_trips(&telegram());
}

#[test]
fn a_google_messages_svg_scans_back_to_its_url() {
    assert_svg_round_trips(&google_messages());
}

#[test]
fn a_demo_simulator_svg_scans_back_to_its_url() {
    assert_svg_round_trips(&demo());
}

#[test]
fn short_and_long_payloads_scan_back_from_svg() {
    for payload in ["x".to_owned(), "HELLO 123".to_owned(), base64_noise(5, 600)] {
        assert_svg_round_trips(&payload);
    }
}

#[test]
fn a_whatsapp_text_rendering_scans_back_on_a_dark_terminal() {
    assert_text_round_trips(&whatsapp_like());
}

#[test]
fn a_telegram_text_rendering_scans_back_on_a_dark_terminal() {
    assert_text_round_trips(&telegram());
}

#[test]
fn a_google_messages_text_rendering_scans_back_on_a_dark_terminal() {
    assert_text_round_trips(&google_messages());
}

#[test]
fn a_demo_simulator_text_rendering_scans_back_on_a_dark_terminal() {
    assert_text_round_trips(&demo());
}

#[test]
fn the_svg_and_text_renderings_show_the_same_modules() {
    let matrix = qr::encode(&whatsapp_like()).expect("encodable");
    let text = matrix.to_text();
    let size = matrix.width() + 2 * QUIET_ZONE;
    for (line_index, line) in text.lines().enumerate() {
        for (x, c) in line.chars().enumerate() {
            for (half, y) in [(0, 2 * line_index), (1, 2 * line_index + 1)] {
                if y >= size {
                    continue;
                }
                let light_shown = matches!((c, half), ('█', _) | ('▀', 0) | ('▄', 1));
                let dark = matrix.is_dark(x.wrapping_sub(QUIET_ZONE), y.wrapping_sub(QUIET_ZONE));
                assert_eq!(light_shown, !dark, "module ({x}, {y})");
            }
        }
    }
}

#[test]
fn a_payload_too_long_for_any_qr_code_is_an_error_not_a_panic() {
    let payload = "y".repeat(5000);
    let svg = qr::render_svg(&payload);
    assert!(
        matches!(svg, Err(QrError::TooLong)),
        "expected TooLong, got {svg:?}"
    );
    let text = qr::render_text(&payload);
    assert!(
        matches!(text, Err(QrError::TooLong)),
        "expected TooLong, got {text:?}"
    );
    assert!(qr::encode(&payload).is_err());
}

/// Deterministic pseudo-random numbers (xorshift64*), so a failure names a payload that
/// reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `len` characters drawn from `alphabet`.
    fn string(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| char::from(alphabet[self.below(alphabet.len())]))
            .collect()
    }
}

const NUMERIC: &[u8] = b"0123456789";
const ALPHANUMERIC: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
/// Printable ASCII: byte mode, with the odd numeric or alphanumeric run. Payloads stay ASCII, as
/// every provider's are: `qrcode` puts byte pairs that look like Shift JIS in kanji segments,
/// which rqrr gives back as the same bytes but a phone would not.
const PRINTABLE: &[u8] =
    b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";

/// The version `qrcode` (and so our encoder) picks for `payload` at level M; 41 when it does
/// not fit.
fn version_of(payload: &str) -> i16 {
    match qrcode::bits::encode_auto(payload.as_bytes(), EcLevel::M).map(|b| b.version()) {
        Ok(Version::Normal(v)) => v,
        Ok(other) => panic!("a Micro QR version {other:?}"),
        Err(_) => 41,
    }
}

/// The length of the longest prefix of `text` that fits in `version` (0 for version 0).
fn longest_prefix_in(text: &str, version: i16) -> usize {
    let (mut fits, mut too_long) = (0, text.len() + 1);
    while too_long - fits > 1 {
        let mid = (fits + too_long) / 2;
        if version_of(&text[..mid]) <= version {
            fits = mid;
        } else {
            too_long = mid;
        }
    }
    fits
}

/// Our symbol for `payload` is `qrcode`'s (level M, its mask choice), module for module.
fn assert_same_symbol_as_qrcode(payload: &str) {
    let ours = qr::encode(payload).expect("the payload is encodable");
    let theirs = qrcode::QrCode::with_error_correction_level(payload, EcLevel::M)
        .expect("the payload is encodable");
    let width = theirs.width();
    assert_eq!(
        ours.width(),
        width,
        "width for a {}-byte payload",
        payload.len()
    );
    let colors = theirs.to_colors();
    let differ = (0..width * width)
        .filter(|&i| ours.is_dark(i % width, i / width) != (colors[i] == Color::Dark))
        .count();
    assert_eq!(
        differ,
        0,
        "modules that differ in the version {} symbol of {payload:?}",
        version_of(payload)
    );
}

#[test]
fn every_version_from_1_to_40_is_the_qrcode_crates_symbol_module_for_module() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (mode, alphabet, max_len) in [
        ("numeric", NUMERIC, 5596),
        ("alphanumeric", ALPHANUMERIC, 3391),
        ("byte", PRINTABLE, 2331),
    ] {
        let text = rng.string(alphabet, max_len + 1);
        assert_eq!(
            version_of(&text),
            41,
            "{mode}: {max_len} characters fill version 40"
        );
        let mut shortest = 1;
        for version in 1..=40 {
            let longest = longest_prefix_in(&text, version);
            assert!(
                longest >= shortest,
                "{mode}: nothing lands in version {version}"
            );
            // The emptiest, a middling and the fullest symbol of this version.
            for len in [shortest, (shortest + longest) / 2, longest] {
                let payload = &text[..len];
                assert_eq!(version_of(payload), version, "{mode}, {len} characters");
                assert_same_symbol_as_qrcode(payload);
            }
            shortest = longest + 1;
        }
    }
}

/// One random payload: up to 500 characters (versions 1 to about 17, where every provider's
/// payload lies) of digits, alphanumerics, base64 or any printable ASCII.
fn random_payload(rng: &mut Rng) -> String {
    let alphabet = [NUMERIC, ALPHANUMERIC, BASE64, PRINTABLE][rng.below(4)];
    let len = 1 + rng.below(500);
    rng.string(alphabet, len)
}

/// Pixels per module for the 2,000 payloads: half of what the other tests use, which halves
/// the time rqrr takes, and still four whole pixels, at which resvg paints every module exactly
/// (`qr/svg.rs` tests scales 1 to 4).
const ROUND_TRIP_SCALE: u32 = 4;

#[test]
fn two_thousand_random_payloads_scan_back_from_svg() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let payloads: Vec<String> = (0..2000).map(|_| random_payload(&mut rng)).collect();
    // rqrr's grid fitting dominates (about 18 ms a payload): one share per core.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let share = payloads.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (part, chunk) in payloads.chunks(share).enumerate() {
            scope.spawn(move || {
                for (j, payload) in chunk.iter().enumerate() {
                    let i = part * share + j;
                    let svg = qr::render_svg(payload).expect("the payload is encodable");
                    let scanned = qrlink_qr_scan::scan_svg(&svg, ROUND_TRIP_SCALE)
                        .unwrap_or_else(|e| panic!("payload {i} did not scan ({e}): {payload:?}"));
                    assert_eq!(&scanned, payload, "payload {i} scanned to something else");
                }
            });
        }
    });
}
