//! The sandbox outbox page: in sandbox mode (`serve --demo`) every text, email and push
//! goes to the in-process sandbox instead of a provider; this page shows what it took —
//! recipient, channel, and the text with its acknowledgment link — so that a newcomer can
//! play the guardian and close the loop. District administrators only, their district's
//! deliveries only.

use std::collections::HashSet;
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tidings_api::AppState;
use tidings_core::{Channel, DeliveryId, Role};

use crate::messages::{failed, html, Frame};
use crate::session::SignedIn;
use crate::Web;

/// Sends shown, newest first.
const SHOWN: usize = 200;

/// One send the sandbox took.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub delivery_id: Option<DeliveryId>,
    pub channel: Channel,
    pub address: String,
    pub body: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Where the outbox page reads the sends from (the binary's in-process sandbox).
pub trait Outbox: Send + Sync + std::fmt::Debug {
    /// Everything taken so far, oldest first.
    fn received(&self) -> Vec<OutboxItem>;
}

/// A piece of a sent text: words, or a link to follow.
pub enum Piece {
    Text(String),
    Link(String),
}

pub struct Row {
    pub item: OutboxItem,
    pub pieces: Vec<Piece>,
}

/// The text with its web addresses made into links.
fn pieces(body: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    for (i, word) in body.split(' ').enumerate() {
        if i > 0 {
            text.push(' ');
        }
        let url = word.trim_end_matches(['.', ',', ')']);
        if url.starts_with("http://") || url.starts_with("https://") {
            out.push(Piece::Text(std::mem::take(&mut text)));
            out.push(Piece::Link(url.to_owned()));
            text.push_str(&word[url.len()..]);
        } else {
            text.push_str(word);
        }
    }
    out.push(Piece::Text(text));
    out
}

#[derive(Template)]
#[template(path = "outbox.html")]
struct OutboxPage {
    frame: Frame,
    rows: Vec<Row>,
}

pub async fn page(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    signed_in: SignedIn,
) -> Response {
    let Some(outbox) = &web.outbox else {
        return (
            StatusCode::NOT_FOUND,
            signed_in
                .lang
                .t("The sandbox is off: messages go to real providers."),
        )
            .into_response();
    };
    if signed_in.staff.role != Role::DistrictAdmin {
        return (
            StatusCode::FORBIDDEN,
            signed_in
                .lang
                .t("The outbox is for district administrators."),
        )
            .into_response();
    }
    let mut items = outbox.received();
    items.reverse();
    let ids: Vec<DeliveryId> = items.iter().filter_map(|r| r.delivery_id).collect();
    let ours: HashSet<DeliveryId> = match state.store.deliveries_by_ids(&ids).await {
        Ok(found) => found
            .into_iter()
            .filter(|d| d.district_id == signed_in.staff.district_id)
            .map(|d| d.id)
            .collect(),
        Err(error) => return failed(error),
    };
    let rows = items
        .into_iter()
        .filter(|r| r.delivery_id.is_some_and(|id| ours.contains(&id)))
        .take(SHOWN)
        .map(|item| Row {
            pieces: pieces(&item.body),
            item,
        })
        .collect();
    html(
        StatusCode::OK,
        OutboxPage {
            frame: Frame::of(&signed_in),
            rows,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_in_a_text_are_found_and_the_rest_kept() {
        let found = pieces("Reply YES or open https://t.example/a/xyz. Thanks");
        let links: Vec<&str> = found
            .iter()
            .filter_map(|p| match p {
                Piece::Link(l) => Some(l.as_str()),
                Piece::Text(_) => None,
            })
            .collect();
        assert_eq!(links, ["https://t.example/a/xyz"]);
        let text: String = found
            .iter()
            .map(|p| match p {
                Piece::Link(l) | Piece::Text(l) => l.as_str(),
            })
            .collect();
        assert_eq!(text, "Reply YES or open https://t.example/a/xyz. Thanks");
    }
}
