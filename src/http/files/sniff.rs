//! What a workspace file's bytes must look like for its extension: text
//! extensions hold UTF-8 text without NUL bytes, image and PDF extensions
//! start with their format's magic bytes. Checked while the upload streams,
//! so a mismatch stops it at once.

/// How the content of an extension is checked, and the type it is served as.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// UTF-8 text without NUL bytes.
    Text(&'static str),
    /// Binary data that starts with a known signature.
    Magic(&'static str, fn(&[u8]) -> bool),
}

impl Kind {
    /// The `Content-Type` the file is served with.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text(content_type) | Self::Magic(content_type, _) => content_type,
        }
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn png(head: &[u8]) -> bool {
    head.starts_with(b"\x89PNG\r\n\x1a\n")
}
fn jpeg(head: &[u8]) -> bool {
    head.starts_with(b"\xff\xd8\xff")
}
fn gif(head: &[u8]) -> bool {
    head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a")
}
fn webp(head: &[u8]) -> bool {
    head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP"
}
fn pdf(head: &[u8]) -> bool {
    head.starts_with(b"%PDF-")
}

/// The check for a lower-case extension, if the server knows one.
pub fn kind_of(extension: &str) -> Option<Kind> {
    Some(match extension {
        "txt" | "log" | "rs" | "py" | "swift" | "toml" => Kind::Text(PLAIN),
        "md" => Kind::Text("text/markdown; charset=utf-8"),
        "csv" => Kind::Text("text/csv; charset=utf-8"),
        "json" => Kind::Text("application/json"),
        "yaml" | "yml" => Kind::Text("application/yaml"),
        // Served as plain text: a script is never handed to a browser as one.
        "js" | "ts" => Kind::Text(PLAIN),
        "png" => Kind::Magic("image/png", png),
        "jpg" | "jpeg" => Kind::Magic("image/jpeg", jpeg),
        "gif" => Kind::Magic("image/gif", gif),
        "webp" => Kind::Magic("image/webp", webp),
        "pdf" => Kind::Magic("application/pdf", pdf),
        _ => return None,
    })
}

/// The lower-case extension of a file name (`report.final.PDF` → `pdf`);
/// none for a name without a dot or starting with its only one (`.env`).
pub fn extension(name: &str) -> Option<String> {
    let (stem, extension) = name.rsplit_once('.')?;
    if stem.is_empty() || extension.is_empty() {
        return None;
    }
    Some(extension.to_ascii_lowercase())
}

/// Bytes kept from the start of a file to check its signature.
const HEAD_BYTES: usize = 16;

/// Checks a file's bytes chunk by chunk as they arrive.
#[derive(Debug)]
pub struct Sniffer {
    kind: Kind,
    head: Vec<u8>,
    /// The bytes of a UTF-8 character cut by a chunk boundary.
    carry: Vec<u8>,
}

impl Sniffer {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            head: Vec::with_capacity(HEAD_BYTES),
            carry: Vec::new(),
        }
    }

    /// Takes the next chunk; an error as soon as the bytes cannot be right.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), &'static str> {
        if self.head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        match self.kind {
            Kind::Text(_) => self.feed_text(chunk),
            Kind::Magic(_, matches) => {
                if self.head.len() >= HEAD_BYTES && !matches(&self.head) {
                    return Err("the content does not match the file's extension");
                }
                Ok(())
            }
        }
    }

    fn feed_text(&mut self, chunk: &[u8]) -> Result<(), &'static str> {
        const NOT_TEXT: &str = "the file's extension is for text but it holds binary data";
        if chunk.contains(&0) {
            return Err(NOT_TEXT);
        }
        let mut rest = chunk;
        // Complete the character a previous chunk cut, one byte at a time.
        while !self.carry.is_empty() {
            let Some((&byte, tail)) = rest.split_first() else {
                return Ok(());
            };
            self.carry.push(byte);
            rest = tail;
            match std::str::from_utf8(&self.carry) {
                Ok(_) => self.carry.clear(),
                Err(err) if err.error_len().is_some() => return Err(NOT_TEXT),
                Err(_) if self.carry.len() >= 4 => return Err(NOT_TEXT),
                Err(_) => {}
            }
        }
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(err) if err.error_len().is_some() => Err(NOT_TEXT),
            Err(err) => {
                self.carry = rest[err.valid_up_to()..].to_vec();
                Ok(())
            }
        }
    }

    /// After the last chunk: the content type, or why the bytes are wrong.
    pub fn finish(self) -> Result<&'static str, &'static str> {
        match self.kind {
            Kind::Text(content_type) if self.carry.is_empty() => Ok(content_type),
            Kind::Text(_) => Err("the file's extension is for text but it is not valid UTF-8"),
            Kind::Magic(content_type, matches) if matches(&self.head) => Ok(content_type),
            Kind::Magic(..) => Err("the content does not match the file's extension"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniff(extension: &str, chunks: &[&[u8]]) -> Result<&'static str, &'static str> {
        let mut sniffer = Sniffer::new(kind_of(extension).unwrap());
        for chunk in chunks {
            sniffer.feed(chunk)?;
        }
        sniffer.finish()
    }

    #[test]
    fn text_must_be_utf8_without_nul_even_across_chunk_boundaries() {
        let text = "héllo, wörld ✓".as_bytes();
        for cut in 0..text.len() {
            assert_eq!(
                sniff("txt", &[&text[..cut], &text[cut..]]),
                Ok("text/plain; charset=utf-8"),
                "cut at {cut}"
            );
        }
        assert!(sniff("txt", &[b"a\0b"]).is_err());
        assert!(sniff("md", &[b"\xff\xfe"]).is_err());
        assert!(sniff("json", &["✓".as_bytes()[..2].as_ref()]).is_err());
        assert!(sniff("txt", &[b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"]).is_err());
    }

    #[test]
    fn images_and_pdfs_must_start_with_their_signature() {
        assert_eq!(
            sniff("png", &[b"\x89PNG", b"\r\n\x1a\nrest"]),
            Ok("image/png")
        );
        assert_eq!(sniff("jpg", &[b"\xff\xd8\xff\xe0"]), Ok("image/jpeg"));
        assert_eq!(sniff("gif", &[b"GIF89a..."]), Ok("image/gif"));
        assert_eq!(sniff("webp", &[b"RIFF\0\0\0\0WEBPVP8 "]), Ok("image/webp"));
        assert_eq!(sniff("pdf", &[b"%PDF-1.7\n"]), Ok("application/pdf"));
        assert!(sniff("png", &[b"just some text, not a picture"]).is_err());
        assert!(sniff("pdf", &[b"%PD"]).is_err());
        assert!(sniff("jpeg", &[b"\x89PNG\r\n\x1a\n"]).is_err());
    }

    #[test]
    fn extensions_are_the_part_after_the_last_dot_in_lower_case() {
        assert_eq!(extension("a.b.PDF").as_deref(), Some("pdf"));
        assert_eq!(extension("notes.txt").as_deref(), Some("txt"));
        assert_eq!(extension(".env"), None);
        assert_eq!(extension("README"), None);
        assert_eq!(extension("trailing."), None);
        assert!(kind_of("exe").is_none());
        assert!(kind_of("html").is_none());
    }
}

/// Proptest-driven fuzzing of the upload sniffer (docs/testing.md, "Parsers
/// of untrusted input"): its verdict on any bytes is the one a reader of the
/// whole file would give, however the upload was cut into chunks.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::http::extract::fuzz::config;

    const EXTENSIONS: [&str; 7] = ["txt", "json", "png", "jpg", "gif", "webp", "pdf"];

    /// The verdict on the whole file at once.
    fn expected(kind: Kind, bytes: &[u8]) -> bool {
        match kind {
            Kind::Text(_) => std::str::from_utf8(bytes).is_ok() && !bytes.contains(&0),
            Kind::Magic(_, matches) => matches(&bytes[..bytes.len().min(HEAD_BYTES)]),
        }
    }

    fn contentish() -> impl Strategy<Value = Vec<u8>> {
        let tail = proptest::collection::vec(any::<u8>(), 0..48);
        prop_oneof![
            tail.clone(),
            any::<String>().prop_map(String::into_bytes),
            (any::<String>(), any::<u8>(), any::<String>()).prop_map(|(a, byte, b)| {
                let mut bytes = a.into_bytes();
                bytes.push(byte);
                bytes.extend(b.into_bytes());
                bytes
            }),
            (
                prop_oneof![
                    Just(&b"\x89PNG\r\n\x1a\n"[..]),
                    Just(&b"\xff\xd8\xff"[..]),
                    Just(&b"GIF89a"[..]),
                    Just(&b"RIFF\0\0\0\0WEBP"[..]),
                    Just(&b"%PDF-"[..]),
                    Just(&b"RIFF"[..]),
                ],
                tail
            )
                .prop_map(|(head, tail)| [head, &tail[..]].concat()),
        ]
    }

    proptest! {
        #![proptest_config(config(512))]

        /// Any bytes cut into any chunks: accepted exactly when the whole
        /// file is what its extension says, never a panic.
        #[test]
        fn the_verdict_does_not_depend_on_how_the_upload_was_cut(
            bytes in contentish(),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
            extension in proptest::sample::select(&EXTENSIONS[..]),
        ) {
            let kind = kind_of(extension).unwrap();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut sniffer = Sniffer::new(kind);
            let mut from = 0;
            let mut verdict = Ok(());
            for to in cuts.into_iter().chain([bytes.len()]) {
                verdict = sniffer.feed(&bytes[from..to]);
                from = to;
                if verdict.is_err() {
                    break;
                }
            }
            let accepted = verdict.is_ok() && sniffer.finish() == Ok(kind.content_type());
            prop_assert_eq!(accepted, expected(kind, &bytes));
        }

        /// Any file name: an extension (lower case, no dot) or none.
        #[test]
        fn any_file_name_has_a_lower_case_extension_or_none(name in any::<String>()) {
            if let Some(extension) = extension(&name) {
                prop_assert!(!extension.is_empty() && !extension.contains('.'));
                prop_assert_eq!(extension.to_ascii_lowercase(), extension.clone());
                let _ = kind_of(&extension);
            }
        }
    }
}
