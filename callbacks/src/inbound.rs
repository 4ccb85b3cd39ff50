//! SMS guardians send: STOP and its equivalents opt them out at once (carriers require
//! it, and emergencies respect it too), START and its equivalents undo that, HELP gets the
//! district's help text; anything else is kept as a reply for staff.

pub use tidings_core::store::SmsKeyword as Keyword;

/// The keyword an SMS body is, if it is one: the whole message, ignoring case, spacing
/// and trailing punctuation ("Stop.", "  opt   out ", "UNSUBSCRIBE!").
pub fn keyword(body: &str) -> Option<Keyword> {
    let words: Vec<String> = body.split_whitespace().map(|w| w.to_uppercase()).collect();
    let text = words.join(" ");
    let text = text.trim_end_matches(|c: char| c.is_whitespace() || ".!?,;".contains(c));
    match text {
        "STOP" | "STOPALL" | "STOP ALL" | "UNSUBSCRIBE" | "CANCEL" | "END" | "QUIT" | "REVOKE"
        | "OPTOUT" | "OPT OUT" | "OPT-OUT" => Some(Keyword::Stop),
        "START" | "UNSTOP" | "YES" => Some(Keyword::Start),
        "HELP" | "INFO" => Some(Keyword::Help),
        _ => None,
    }
}

/// Whether `body` is the acknowledgment keyword (ignoring case, spacing and trailing
/// punctuation, like the carrier keywords).
pub fn is_ack(body: &str, keyword: &str) -> bool {
    let normal = |text: &str| {
        let words: Vec<String> = text.split_whitespace().map(str::to_uppercase).collect();
        words
            .join(" ")
            .trim_end_matches(|c: char| c.is_whitespace() || ".!?,;".contains(c))
            .to_owned()
    };
    !keyword.trim().is_empty() && normal(body) == normal(keyword)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carrier_keywords_are_recognised_however_they_are_typed() {
        for stop in [
            "STOP",
            "stop",
            " Stop. ",
            "stopall",
            "Unsubscribe!",
            "cancel",
            "END",
            "quit",
            "revoke",
            "optout",
            "opt out",
            "OPT   OUT",
            "Opt-Out",
        ] {
            assert_eq!(keyword(stop), Some(Keyword::Stop), "{stop:?}");
        }
        for start in ["START", "unstop", "Yes"] {
            assert_eq!(keyword(start), Some(Keyword::Start), "{start:?}");
        }
        assert_eq!(keyword("help"), Some(Keyword::Help));
        for reply in [
            "stop sending me these",
            "Please stop",
            "1",
            "OK",
            "",
            "stopp",
            "I will pick him up",
        ] {
            assert_eq!(keyword(reply), None, "{reply:?}");
        }
    }

    #[test]
    fn the_ack_keyword_is_matched_like_the_carrier_ones() {
        assert!(is_ack(" 1 ", "1"));
        assert!(is_ack("ok!", "OK"));
        assert!(!is_ack("11", "1"));
        assert!(!is_ack("ok thanks", "OK"));
        assert!(!is_ack("anything", " "));
    }

    proptest::proptest! {
        /// Case, surrounding whitespace and trailing punctuation never change the keyword.
        #[test]
        fn spelling_variations_keep_the_keyword(
            word in proptest::sample::select(vec!["stop", "opt out", "start", "help", "unsubscribe"]),
            upper in proptest::collection::vec(proptest::bool::ANY, 11),
            before in "[ \t\n]{0,3}",
            after in "[.!? ]{0,3}",
        ) {
            let cased: String = word
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, u)| if *u { c.to_ascii_uppercase() } else { c })
                .collect();
            let typed = format!("{before}{cased}{after}");
            proptest::prop_assert_eq!(keyword(&typed), keyword(word));
            proptest::prop_assert!(keyword(word).is_some());
        }

        /// Any message with a letter more than a keyword is a reply, never an opt-out.
        #[test]
        fn longer_messages_are_replies(extra in "[a-z]{1,12}") {
            let text = format!("stop {extra}");
            proptest::prop_assume!(extra != "all");
            proptest::prop_assert_eq!(keyword(&text), None);
        }
    }
}
