//! Strips what a photo says about its owner besides the picture: EXIF (GPS
//! position, camera serial, time), XMP, comments and text chunks. The image
//! data is copied byte for byte, so nothing is re-encoded and no quality is
//! lost; a file whose structure does not parse is refused rather than
//! stored with whatever it hides.
//!
//! - JPEG: every APPn segment but APP0 (JFIF) and an APP2 ICC colour
//!   profile, and every COM segment, are dropped before the scan.
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
            // EOI before any scan: nothing to show.
            return Err(BAD);
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
            // Start of scan: the entropy-coded data and everything after it
            // is the picture.
            out.extend_from_slice(&bytes[at..]);
            return Ok(out);
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
