//! The words Tidings itself puts in front of guardians, around the school's message: the
//! acknowledgment line of an SMS or email, and the pages behind acknowledgment and
//! unsubscribe links. One table per language; a guardian whose language has none gets
//! English. `{keyword}`, `{url}` and `{district}` are filled in by [`fill`].

/// Guardian-facing phrases in one language.
#[derive(Debug, PartialEq, Eq)]
pub struct Words {
    /// The BCP 47 primary language tag these are in.
    pub lang: &'static str,
    /// SMS line when replying acknowledges: `{keyword}`.
    pub reply_to_acknowledge: &'static str,
    /// SMS line with the link: `{url}`.
    pub acknowledge_link: &'static str,
    /// Email: above the acknowledgment link.
    pub please_acknowledge: &'static str,
    pub acknowledge_button: &'static str,
    pub acknowledged: &'static str,
    pub already_acknowledged: &'static str,
    pub no_acknowledgment_needed: &'static str,
    pub link_expired: &'static str,
    pub link_invalid: &'static str,
    /// `{district}`.
    pub unsubscribe_question: &'static str,
    pub unsubscribe_button: &'static str,
    /// `{district}`.
    pub unsubscribed: &'static str,
}

const EN: Words = Words {
    lang: "en",
    reply_to_acknowledge: "Reply {keyword} to acknowledge.",
    acknowledge_link: "Acknowledge: {url}",
    please_acknowledge: "Please confirm that you have read this message:",
    acknowledge_button: "Acknowledge",
    acknowledged: "Thank you. Your acknowledgment has been recorded.",
    already_acknowledged: "This message has already been acknowledged.",
    no_acknowledgment_needed: "This message does not ask for an acknowledgment.",
    link_expired: "This link has expired.",
    link_invalid: "This link is not valid. Please check that it was copied completely.",
    unsubscribe_question: "Stop email from {district}?",
    unsubscribe_button: "Stop email",
    unsubscribed:
        "You will no longer receive email from {district}. Emergency alerts may still be sent.",
};

const ES: Words = Words {
    lang: "es",
    reply_to_acknowledge: "Responda {keyword} para confirmar.",
    acknowledge_link: "Confirmar: {url}",
    please_acknowledge: "Por favor, confirme que leyó este mensaje:",
    acknowledge_button: "Confirmar lectura",
    acknowledged: "Gracias. Su confirmación ha sido registrada.",
    already_acknowledged: "Este mensaje ya fue confirmado.",
    no_acknowledgment_needed: "Este mensaje no pide confirmación.",
    link_expired: "Este enlace ha vencido.",
    link_invalid: "Este enlace no es válido. Compruebe que se copió completo.",
    unsubscribe_question: "¿Dejar de recibir correos de {district}?",
    unsubscribe_button: "Dejar de recibir correos",
    unsubscribed:
        "Ya no recibirá correos de {district}. Las alertas de emergencia pueden seguir enviándose.",
};

const FR: Words = Words {
    lang: "fr",
    reply_to_acknowledge: "Répondez {keyword} pour confirmer.",
    acknowledge_link: "Confirmer : {url}",
    please_acknowledge: "Merci de confirmer que vous avez lu ce message :",
    acknowledge_button: "Confirmer la lecture",
    acknowledged: "Merci. Votre confirmation a été enregistrée.",
    already_acknowledged: "Ce message a déjà été confirmé.",
    no_acknowledgment_needed: "Ce message ne demande pas de confirmation.",
    link_expired: "Ce lien a expiré.",
    link_invalid: "Ce lien n'est pas valide. Vérifiez qu'il a été copié en entier.",
    unsubscribe_question: "Ne plus recevoir les e-mails de {district} ?",
    unsubscribe_button: "Ne plus recevoir d'e-mails",
    unsubscribed: "Vous ne recevrez plus d'e-mails de {district}. Les alertes d'urgence peuvent encore être envoyées.",
};

const PT: Words = Words {
    lang: "pt",
    reply_to_acknowledge: "Responda {keyword} para confirmar.",
    acknowledge_link: "Confirmar: {url}",
    please_acknowledge: "Por favor, confirme que leu esta mensagem:",
    acknowledge_button: "Confirmar leitura",
    acknowledged: "Obrigado. Sua confirmação foi registrada.",
    already_acknowledged: "Esta mensagem já foi confirmada.",
    no_acknowledgment_needed: "Esta mensagem não pede confirmação.",
    link_expired: "Este link expirou.",
    link_invalid: "Este link não é válido. Verifique se foi copiado por completo.",
    unsubscribe_question: "Deixar de receber e-mails de {district}?",
    unsubscribe_button: "Deixar de receber e-mails",
    unsubscribed: "Você não receberá mais e-mails de {district}. Alertas de emergência ainda podem ser enviados.",
};

const ALL: [&Words; 4] = [&EN, &ES, &FR, &PT];

/// The phrases for a language tag (`es`, `es-MX`, `PT_br`, or an `Accept-Language`
/// header's first choice), English when there are none.
pub fn words(language: &str) -> &'static Words {
    let primary = language
        .split([',', ';', '-', '_'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    ALL.into_iter().find(|w| w.lang == primary).unwrap_or(&EN)
}

/// Whether `tag` is a plain BCP 47 language tag: a primary language of two or three
/// letters, then subtags of two to eight letters or digits (`en`, `es-MX`, `zh-Hant`).
pub fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let primary = parts.next().unwrap_or_default();
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_lowercase())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `phrase` with each `{name}` replaced by its value.
pub fn fill(phrase: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(phrase.to_owned(), |text, (name, value)| {
            text.replace(&format!("{{{name}}}"), value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn language_tags_are_told_from_other_text() {
        for tag in ["en", "es", "haw", "pt-BR", "zh-Hant", "es-419"] {
            assert!(is_language_tag(tag), "{tag}");
        }
        for not in [
            "", "e", "English", "EN", "en-", "en_US", "es-MX-", "fr;q=0.9", "en us",
        ] {
            assert!(!is_language_tag(not), "{not}");
        }
    }

    proptest! {
        #[test]
        fn well_formed_tags_are_accepted(tag in "[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}") {
            prop_assert!(is_language_tag(&tag));
        }

        #[test]
        fn text_with_anything_but_letters_digits_and_hyphens_is_refused(
            head in "[a-z]{2}", odd in "[^A-Za-z0-9-]", tail in "[a-z]{0,3}"
        ) {
            let tag = format!("{head}{odd}{tail}");
            prop_assert!(!is_language_tag(&tag));
        }
    }

    #[test]
    fn regional_tags_find_their_language_and_unknown_ones_get_english() {
        assert_eq!(words("es-MX").lang, "es");
        assert_eq!(words("PT_br").lang, "pt");
        assert_eq!(words("fr").acknowledge_button, "Confirmer la lecture");
        assert_eq!(words("so").lang, "en");
        assert_eq!(words("").lang, "en");
        assert_eq!(words("fr;q=0.9,en").lang, "fr");
    }

    #[test]
    fn every_language_keeps_the_placeholders_its_phrases_are_filled_with() {
        for w in ALL {
            assert!(w.reply_to_acknowledge.contains("{keyword}"), "{}", w.lang);
            assert!(w.acknowledge_link.contains("{url}"), "{}", w.lang);
            assert!(w.unsubscribe_question.contains("{district}"), "{}", w.lang);
            assert!(w.unsubscribed.contains("{district}"), "{}", w.lang);
        }
        assert_eq!(
            fill(EN.reply_to_acknowledge, &[("keyword", "1")]),
            "Reply 1 to acknowledge."
        );
    }
}
