//! How many SMS segments a text takes, as carriers bill it: GSM-7 (GSM 03.38, 160
//! characters in one segment, 153 per segment when split; the extension characters
//! `^{}\[~]|€` and form feed count twice) when every character is in that alphabet, else
//! UCS-2 (70 UTF-16 units in one segment, 67 per segment when split).

/// The GSM 03.38 basic character set (without the escape to the extension table).
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                         ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The GSM 03.38 extension table: each takes an escape and the character.
const GSM_EXTENSION: &str = "^{}\\[~]|€\u{c}";

/// The alphabet a text is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

/// What a text takes to send by SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Segments {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 units (UCS-2).
    pub units: usize,
    pub count: usize,
}

/// The segments `text` takes.
pub fn segments(text: &str) -> Segments {
    let gsm: Option<usize> = text
        .chars()
        .map(|c| {
            if GSM_BASIC.contains(c) {
                Some(1)
            } else if GSM_EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            }
        })
        .sum();
    let (encoding, units, single, split) = match gsm {
        Some(septets) => (Encoding::Gsm7, septets, 160, 153),
        None => (Encoding::Ucs2, text.encode_utf16().count(), 70, 67),
    };
    let count = if units <= single {
        1
    } else {
        units.div_ceil(split)
    };
    Segments {
        encoding,
        units,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_limits_of_one_segment_and_of_a_split() {
        assert_eq!(segments(&"a".repeat(160)).count, 1);
        assert_eq!(segments(&"a".repeat(161)).count, 2);
        assert_eq!(segments(&"a".repeat(306)).count, 2);
        assert_eq!(segments(&"a".repeat(307)).count, 3);
        // An extension character counts twice.
        assert_eq!(segments(&"€".repeat(80)).units, 160);
        assert_eq!(segments(&"€".repeat(81)).count, 2);
        // One character outside GSM-7 makes the whole text UCS-2.
        // ñ is in GSM-7, ó (unlike ò) is not.
        assert_eq!(segments("año").encoding, Encoding::Gsm7);
        assert_eq!(segments("canción").encoding, Encoding::Ucs2);
        let vietnamese = format!("{}ờ", "a".repeat(69));
        assert_eq!(segments(&vietnamese).encoding, Encoding::Ucs2);
        assert_eq!(segments(&vietnamese).count, 1);
        assert_eq!(segments(&format!("{vietnamese}a")).count, 2);
        // An emoji is two UTF-16 units.
        assert_eq!(segments("🙂").units, 2);
    }

    proptest! {
        #[test]
        fn segments_hold_the_text_and_no_more_than_needed(text in "\\PC{0,500}") {
            let s = segments(&text);
            let (single, split) = match s.encoding {
                Encoding::Gsm7 => (160, 153),
                Encoding::Ucs2 => (70, 67),
            };
            prop_assert!(s.count >= 1);
            if s.count == 1 {
                prop_assert!(s.units <= single);
            } else {
                prop_assert!(s.units > single);
                prop_assert!(s.units <= s.count * split);
                prop_assert!(s.units > (s.count - 1) * split);
            }
        }
    }
}
