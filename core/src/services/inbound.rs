//! A guardian's text to one of the district's numbers: STOP, START, HELP, the
//! acknowledgment keyword, or a reply. Taken in one transaction with what it asks for
//! (see [`crate::store::inbox::Inbox::take_inbound`]), before the provider is answered:
//! a failure leaves nothing behind and the provider's retry is taken afresh, so a STOP
//! is never recorded without its opt-out nor an acknowledgment lost.

use chrono::{DateTime, Utc};

use super::acknowledge::AckVia;
use crate::store::{InboundSms, InboundTaken, Store, StoreResult};

/// Takes `sms` as it arrived `at`; `None` when it repeats a text already taken. An
/// acknowledgment by text is the guardian's, through that text (see [`AckVia::SmsReply`]).
pub async fn take_inbound_sms(
    store: &dyn Store,
    sms: &InboundSms,
    at: DateTime<Utc>,
) -> StoreResult<Option<InboundTaken>> {
    let actor = AckVia::SmsReply(&sms.provider_message_id).actor();
    store.take_inbound(sms, &actor, at).await
}
