//! Strips what a photo says about its owner besides the picture: EXIF (GPS
//! position, camera serial, time), XMP, comments and text chunks. The image
//! data is copied byte for byte, so nothing is re-encoded and no quality is
//! lost; a file whose structure does not parse is refused rather than
//! stored with whatever it hides.
//!
//! - JPEG: every APPn segment but APP0 (JFIF) and an APP2 ICC colour
//!   profile, and every COM segment, are dropped, before the first scan and
//!   between the scans of a progressive JPEG; whatever follows the end of
//!   the image (EOI) is dropped.
//! - PNG: `tEXt`, `zTXt`, `iTXt`, `eXIf` and `tIME` chunks are dropped.
//! - WebP: `EXIF` and `XMP ` chunks are dropped and their VP8X flags cleared.
//! - GIF carries no EXIF; it is stored as sent.

/// Why a photo could not be cleaned.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the photo is not a valid {0} file")]
pub struct Malformed(pub &'static str);

/// The photo without its metadata; `content_type` is what the bytes were
/// sniffed as.
pub fn strip(content_type: &str, bytes: &[u8]) -> Result<Vec<u8>, Malformed> {
    match content_type {
        "image/jpeg" => strip_jpeg(bytes),
        "image/png" => strip_png(bytes),
        "image/webp" => strip_webp(bytes),
        _ => Ok(bytes.to_vec()),
    }
}

fn strip_jpeg(bytes: &[u8]) -> Result<Vec<u8>, Malformed> {
    const BAD: Malformed = Malformed("JPEG");
    if bytes.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err(BAD);
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..2]);
    let mut at = 2;
    let mut scanned = false;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        if bytes.get(at) != Some(&0xFF) {
            return Err(BAD);
        }
        while bytes.get(at) == Some(&0xFF) {
            at += 1;
        }
        let marker = *bytes.get(at).ok_or(BAD)?;
        at += 1;
        if marker == 0xD9 {
            if !scanned {
                // EOI before any scan: nothing to show.
                return Err(BAD);
            }
            // Whatever follows the end of the image is no part of it: a
            // phone's "motion photo" video, a trailer of maker notes.
            out.extend_from_slice(&[0xFF, 0xD9]);
            return Ok(out);
        }
        let length = bytes.get(at..at + 2).ok_or(BAD)?;
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        if length < 2 {
            return Err(BAD);
        }
        let segment = bytes.get(at - 2..at + length).ok_or(BAD)?;
        let payload = &segment[4..];
        let keep = match marker {
            0xE0 => true,
            0xE2 => payload.starts_with(b"ICC_PROFILE\0"),
            0xE1 | 0xE3..=0xEF | 0xFE => false,
            _ => true,
        };
        if keep {
            out.push(0xFF);
            out.push(marker);
            out.extend_from_slice(&segment[2..]);
        }
        at += length;
        if marker == 0xDA {
            // Start of scan: the entropy-coded data is the picture, up to
            // the next marker that is not a stuffed 0xFF, a restart or fill.
            // A progressive JPEG has more segments and scans after it (and
            // metadata could hide there as well as before the first scan).
            scanned = true;
            let start = at;
            loop {
                match (bytes.get(at), bytes.get(at + 1)) {
                    // Cut short without an end of image: kept as it is.
                    (None, _) | (Some(0xFF), None) => {
                        out.extend_from_slice(&bytes[start..]);
                        return Ok(out);
                    }
                    // A stuffed 0xFF or a restart marker: data.
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => at += 2,
                    // Fill before a marker (copied as it is).
                    (Some(0xFF), Some(0xFF)) => at += 1,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => at += 1,
                }
            }
            out.extend_from_slice(&bytes[start..at]);
        }
    }
}

fn strip_png(bytes: &[u8]) -> Result<Vec<u8>, Malformed> {
    const BAD: Malformed = Malformed("PNG");
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    const DROPPED: [&[u8; 4]; 5] = [b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"];
    if !bytes.starts_with(SIGNATURE) {
        return Err(BAD);
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(SIGNATURE);
    let mut at = SIGNATURE.len();
    loop {
        let header = bytes.get(at..at + 8).ok_or(BAD)?;
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = &header[4..8];
        // length, type, data, CRC
        let chunk = bytes.get(at..at + 12 + length).ok_or(BAD)?;
        if !DROPPED.iter().any(|dropped| kind == &dropped[..]) {
            out.extend_from_slice(chunk);
        }
        at += chunk.len();
        if kind == b"IEND" {
            return Ok(out);
        }
    }
}

fn strip_webp(bytes: &[u8]) -> Result<Vec<u8>, Malformed> {
    const BAD: Malformed = Malformed("WebP");
    const EXIF_FLAG: u8 = 0x08;
    const XMP_FLAG: u8 = 0x04;
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return Err(BAD);
    }
    let declared = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    let end = 8usize.checked_add(declared).ok_or(BAD)?;
    let body = bytes.get(12..end).ok_or(BAD)?;
    let mut chunks = Vec::with_capacity(body.len());
    let mut at = 0;
    while at < body.len() {
        let header = body.get(at..at + 8).ok_or(BAD)?;
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        // Chunks are padded to an even size.
        let padded = size + (size & 1);
        let chunk = body.get(at..at + 8 + padded).ok_or(BAD)?;
        match &header[..4] {
            b"EXIF" | b"XMP " => {}
            b"VP8X" => {
                let mut chunk = chunk.to_vec();
                let flags = chunk.get_mut(8).ok_or(BAD)?;
                *flags &= !(EXIF_FLAG | XMP_FLAG);
                chunks.extend_from_slice(&chunk);
            }
            _ => chunks.extend_from_slice(chunk),
        }
        at += chunk.len();
    }
    let size = u32::try_from(chunks.len() + 4).map_err(|_| BAD)?;
    let mut out = Vec::with_capacity(chunks.len() + 12);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&chunks);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG segment: marker, big-endian length (itself included), payload.
    fn segment(marker: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFF, marker];
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&[0, 0, 0, 0]); // CRC: not checked here
        out
    }

    #[test]
    fn a_jpeg_loses_its_exif_xmp_and_comments_and_keeps_its_picture() {
        let scan = [0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD9];
        let mut jpeg = vec![0xFF, 0xD8];
        jpeg.extend(segment(0xE0, b"JFIF\0\x01\x01"));
        jpeg.extend(segment(0xE1, b"Exif\0\0GPSLatitude 48.8584"));
        jpeg.extend(segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>"));
        jpeg.extend(segment(0xE2, b"ICC_PROFILE\0\x01\x01colour"));
        jpeg.extend(segment(0xFE, b"taken at home"));
        jpeg.extend(segment(0xDB, b"quant"));
        jpeg.extend(segment(0xDA, b"scan header"));
        jpeg.extend(scan);
        let clean = strip("image/jpeg", &jpeg).unwrap();
        let text = String::from_utf8_lossy(&clean);
        for gone in ["Exif", "GPSLatitude", "xmpmeta", "taken at home"] {
            assert!(!text.contains(gone), "{gone} survived");
        }
        for kept in ["JFIF", "ICC_PROFILE", "quant", "scan header"] {
            assert!(text.contains(kept), "{kept} was lost");
        }
        assert!(clean.ends_with(&scan), "the picture is copied as it was");
    }

    #[test]
    fn a_png_loses_its_text_exif_and_time_chunks() {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(png_chunk(b"IHDR", &[0; 13]));
        png.extend(png_chunk(b"tEXt", b"Comment\0secret"));
        png.extend(png_chunk(b"eXIf", b"MM\0*GPS"));
        png.extend(png_chunk(b"IDAT", b"pixels"));
        png.extend(png_chunk(b"IEND", b""));
        let clean = strip("image/png", &png).unwrap();
        let text = String::from_utf8_lossy(&clean);
        assert!(!text.contains("secret") && !text.contains("GPS"));
        assert!(text.contains("IHDR") && text.contains("pixels") && text.contains("IEND"));
    }

    #[test]
    fn a_webp_loses_its_exif_and_xmp_chunks_and_flags() {
        let mut body = b"VP8X".to_vec();
        body.extend(10u32.to_le_bytes());
        body.extend([0x08 | 0x04 | 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        body.extend(b"VP8 ");
        body.extend(4u32.to_le_bytes());
        body.extend(b"data");
        body.extend(b"EXIF");
        body.extend(3u32.to_le_bytes());
        body.extend(b"GPS\0");
        let mut webp = b"RIFF".to_vec();
        webp.extend(((body.len() + 4) as u32).to_le_bytes());
        webp.extend(b"WEBP");
        webp.extend(&body);
        let clean = strip("image/webp", &webp).unwrap();
        assert!(!String::from_utf8_lossy(&clean).contains("GPS"));
        assert_eq!(clean[20], 0x10, "EXIF and XMP flags cleared, others kept");
        let size = u32::from_le_bytes([clean[4], clean[5], clean[6], clean[7]]) as usize;
        assert_eq!(size + 8, clean.len());
    }

    #[test]
    fn truncated_or_garbled_files_are_refused() {
        assert!(strip("image/jpeg", b"\xff\xd8\xff\xe1\xff\xff").is_err());
        assert!(strip("image/jpeg", b"\xff\xd8\xff\xd9").is_err());
        assert!(strip("image/png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR tiny").is_err());
        assert!(strip("image/webp", b"RIFF\xff\xff\xff\xffWEBP").is_err());
    }
}

/// Proptest-driven fuzzing of the stripper (docs/testing.md, "Parsers of
/// untrusted input"): any bytes are cleaned or refused without a panic; what
/// comes out is still a file of its type (the stripper reads it back as
/// itself); generated photos lose exactly their metadata, wherever it is.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::http::extract::fuzz::{config, corpus};
    // The type the bytes sniff as, judged as an upload is.
    use crate::http::profile::sniff_image as magic;

    const TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/webp", "image/gif"];
    /// In every metadata payload the generators write, and in nothing else.
    const SECRET: &[u8] = b"SECRET-GPS";

    fn holds_secret(bytes: &[u8]) -> bool {
        bytes.windows(SECRET.len()).any(|window| window == SECRET)
    }

    /// What comes out is a file of the type it went in as: it sniffs the
    /// same, and cleaning it again changes nothing.
    fn check_cleaned(content_type: &str, input: &[u8], out: &[u8]) {
        if magic(input) == Some(content_type) {
            assert_eq!(
                magic(out),
                Some(content_type),
                "still sniffs as {content_type}"
            );
        }
        assert_eq!(
            strip(content_type, out).as_deref(),
            Ok(out),
            "cleaning is idempotent"
        );
    }

    fn jpeg_segment(marker: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFF, marker];
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A header segment of a JPEG: kept (picture) or dropped (metadata).
    fn jpeg_header_segment() -> impl Strategy<Value = (Vec<u8>, bool)> {
        let picture = proptest::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            Just((jpeg_segment(0xE0, b"JFIF\0\x01\x01"), true)),
            (
                prop_oneof![Just(0xDBu8), Just(0xC4), Just(0xC0), Just(0xC2), Just(0xDD)],
                picture.clone()
            )
                .prop_map(|(marker, payload)| (jpeg_segment(marker, &payload), true)),
            picture.clone().prop_map(|tail| {
                let mut payload = b"ICC_PROFILE\0".to_vec();
                payload.extend(tail);
                (jpeg_segment(0xE2, &payload), true)
            }),
            (prop_oneof![0xE1u8..=0xEF, Just(0xFE)], picture).prop_map(|(marker, tail)| {
                let mut payload = b"Exif\0\0".to_vec();
                payload.extend(SECRET);
                payload.extend(tail);
                (jpeg_segment(marker, &payload), false)
            }),
        ]
    }

    /// Entropy-coded data: 0xFF stuffed, restart markers here and there.
    fn scan_data() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec((any::<u8>(), 0u8..20), 0..64).prop_map(|bytes| {
            let mut out = Vec::new();
            for (byte, restart) in bytes {
                out.push(byte);
                if byte == 0xFF {
                    out.push(0x00);
                }
                if restart < 8 {
                    out.extend([0xFF, 0xD0 + restart]);
                }
            }
            out
        })
    }

    /// A JPEG (baseline or progressive, with or without EOI and trailer)
    /// and what cleaning must make of it.
    fn jpeg() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let scan = (
            proptest::collection::vec(jpeg_header_segment(), 0..5),
            proptest::collection::vec(any::<u8>(), 0..12),
            scan_data(),
        );
        (
            proptest::collection::vec(scan, 1..4),
            prop_oneof![
                Just(None),
                Just(Some(Vec::new())),
                Just(Some(SECRET.to_vec()))
            ],
        )
            .prop_map(|(scans, end)| {
                let (mut input, mut expected) = (vec![0xFF, 0xD8], vec![0xFF, 0xD8]);
                for (segments, header, data) in scans {
                    for (segment, keep) in segments {
                        input.extend(&segment);
                        if keep {
                            expected.extend(&segment);
                        }
                    }
                    let sos = jpeg_segment(0xDA, &header);
                    input.extend(&sos);
                    input.extend(&data);
                    expected.extend(&sos);
                    expected.extend(&data);
                }
                if let Some(trailer) = end {
                    input.extend([0xFF, 0xD9]);
                    input.extend(trailer);
                    expected.extend([0xFF, 0xD9]);
                }
                (input, expected)
            })
    }

    fn png_chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out
    }

    fn png() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let chunk = (
            prop_oneof![
                Just((&b"IDAT"[..], true)),
                Just((&b"PLTE"[..], true)),
                Just((&b"gAMA"[..], true)),
                Just((&b"iCCP"[..], true)),
                Just((&b"tEXt"[..], false)),
                Just((&b"zTXt"[..], false)),
                Just((&b"iTXt"[..], false)),
                Just((&b"eXIf"[..], false)),
                Just((&b"tIME"[..], false)),
            ],
            proptest::collection::vec(any::<u8>(), 0..24),
        );
        (proptest::collection::vec(chunk, 0..6), any::<bool>()).prop_map(|(chunks, trailer)| {
            let signature = b"\x89PNG\r\n\x1a\n";
            let ihdr = png_chunk(b"IHDR", &[0; 13]);
            let (mut input, mut expected) = (signature.to_vec(), signature.to_vec());
            input.extend(&ihdr);
            expected.extend(&ihdr);
            for ((kind, keep), data) in chunks {
                let mut data = data;
                if !keep {
                    data.extend(SECRET);
                }
                let chunk = png_chunk(kind, &data);
                input.extend(&chunk);
                if keep {
                    expected.extend(&chunk);
                }
            }
            let iend = png_chunk(b"IEND", b"");
            input.extend(&iend);
            expected.extend(&iend);
            if trailer {
                input.extend(SECRET);
            }
            (input, expected)
        })
    }

    fn webp_chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_vec();
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(data);
        if data.len() % 2 == 1 {
            out.push(0);
        }
        out
    }

    fn riff(body: &[u8]) -> Vec<u8> {
        let mut out = b"RIFF".to_vec();
        out.extend(((body.len() + 4) as u32).to_le_bytes());
        out.extend(b"WEBP");
        out.extend(body);
        out
    }

    fn webp() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let chunk = (
            prop_oneof![
                Just((&b"VP8 "[..], true)),
                Just((&b"VP8L"[..], true)),
                Just((&b"ALPH"[..], true)),
                Just((&b"ICCP"[..], true)),
                Just((&b"ANMF"[..], true)),
                Just((&b"EXIF"[..], false)),
                Just((&b"XMP "[..], false)),
            ],
            proptest::collection::vec(any::<u8>(), 0..24),
        );
        (
            any::<u8>(),
            proptest::collection::vec(chunk, 0..6),
            any::<bool>(),
        )
            .prop_map(|(flags, chunks, trailer)| {
                let mut vp8x = vec![flags, 0, 0, 0, 1, 0, 0, 1, 0, 0];
                let (mut input, mut expected) = (webp_chunk(b"VP8X", &vp8x), Vec::new());
                vp8x[0] &= !0x0C;
                expected.extend(webp_chunk(b"VP8X", &vp8x));
                for ((kind, keep), data) in chunks {
                    let mut data = data;
                    if !keep {
                        data.extend(SECRET);
                    }
                    let chunk = webp_chunk(kind, &data);
                    input.extend(&chunk);
                    if keep {
                        expected.extend(&chunk);
                    }
                }
                let mut input = riff(&input);
                if trailer {
                    input.extend(SECRET);
                }
                (input, riff(&expected))
            })
    }

    /// Bytes that start like a photo more often than uniform bytes do.
    fn photoish() -> impl Strategy<Value = Vec<u8>> {
        let any_bytes = proptest::collection::vec(any::<u8>(), 0..96);
        prop_oneof![
            any_bytes.clone(),
            (
                prop_oneof![
                    Just(b"\xff\xd8".to_vec()),
                    Just(b"\xff\xd8\xff".to_vec()),
                    Just(b"\x89PNG\r\n\x1a\n".to_vec()),
                    Just(b"RIFF\x20\0\0\0WEBP".to_vec()),
                    Just(b"RIFF\xff\xff\xff\xffWEBP".to_vec()),
                    Just(b"GIF89a".to_vec()),
                ],
                any_bytes.clone()
            )
                .prop_map(|(mut head, tail)| {
                    head.extend(tail);
                    head
                }),
            (
                prop_oneof![jpeg(), png(), webp()],
                any::<usize>(),
                any_bytes
            )
                .prop_map(|((mut photo, _), at, junk)| {
                    // A valid photo, cut somewhere and continued with junk.
                    photo.truncate(at % (photo.len() + 1));
                    photo.extend(junk);
                    photo
                }),
        ]
    }

    proptest! {
        #![proptest_config(config(256))]

        /// Any bytes, under any type: cleaned or refused, never a panic;
        /// what is cleaned is still a file of its type.
        #[test]
        fn any_bytes_are_cleaned_or_refused_without_panicking(bytes in photoish()) {
            for content_type in TYPES {
                if let Ok(out) = strip(content_type, &bytes) {
                    check_cleaned(content_type, &bytes, &out);
                }
            }
            if let Some(content_type) = magic(&bytes) {
                if let Ok(out) = strip(content_type, &bytes) {
                    prop_assert_eq!(magic(&out), Some(content_type));
                }
            }
        }

        /// A JPEG loses every APPn but JFIF and ICC, every COM, before the
        /// first scan, between scans, and whatever follows its end; the
        /// rest is copied byte for byte.
        #[test]
        fn a_jpeg_loses_exactly_its_metadata_wherever_it_is((input, expected) in jpeg()) {
            let out = strip("image/jpeg", &input).unwrap();
            prop_assert!(!holds_secret(&out));
            prop_assert_eq!(&out, &expected);
            check_cleaned("image/jpeg", &input, &out);
        }

        /// A PNG loses its text, EXIF and time chunks and what follows IEND.
        #[test]
        fn a_png_loses_exactly_its_metadata((input, expected) in png()) {
            let out = strip("image/png", &input).unwrap();
            prop_assert!(!holds_secret(&out));
            prop_assert_eq!(&out, &expected);
            check_cleaned("image/png", &input, &out);
        }

        /// A WebP loses its EXIF and XMP chunks and flags, and what follows
        /// its RIFF size.
        #[test]
        fn a_webp_loses_exactly_its_metadata((input, expected) in webp()) {
            let out = strip("image/webp", &input).unwrap();
            prop_assert!(!holds_secret(&out));
            prop_assert_eq!(&out, &expected);
            check_cleaned("image/webp", &input, &out);
        }
    }

    /// `tests/corpus/photo/`: `ok-*` are cleaned (and then hold no
    /// `SECRET-GPS`), `err-*` are refused; the type is the extension's.
    #[test]
    fn the_corpus_of_photos_is_cleaned_or_refused_as_named() {
        for (name, bytes) in corpus("photo") {
            let content_type = match name.rsplit_once('.').map(|(_, ext)| ext) {
                Some("jpg") => "image/jpeg",
                Some("png") => "image/png",
                Some("webp") => "image/webp",
                other => panic!("{name}: unknown extension {other:?}"),
            };
            match strip(content_type, &bytes) {
                Ok(out) => {
                    assert!(name.starts_with("ok-"), "{name} was cleaned");
                    assert!(!holds_secret(&out), "{name} kept its metadata");
                    check_cleaned(content_type, &bytes, &out);
                }
                Err(_) => assert!(name.starts_with("err-"), "{name} was refused"),
            }
        }
    }
}
