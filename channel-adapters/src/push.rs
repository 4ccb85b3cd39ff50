//! The push channel: a device is addressed as `apns:TOKEN`, `fcm:TOKEN` or
//! `webpush:SUBSCRIPTION` (a browser's, see [`crate::webpush`]), and each send goes to
//! the provider of its platform.

use std::num::NonZeroU32;

use async_trait::async_trait;

use crate::apns::Apns;
use crate::fcm::Fcm;
use crate::webpush::WebPush;
use crate::{ChannelAdapter, Outgoing, SendOutcome};

pub struct Push {
    apns: Option<Apns>,
    fcm: Option<Fcm>,
    web_push: Option<WebPush>,
}

impl Push {
    /// `None` when no platform is configured.
    pub fn new(apns: Option<Apns>, fcm: Option<Fcm>, web_push: Option<WebPush>) -> Option<Self> {
        (apns.is_some() || fcm.is_some() || web_push.is_some()).then_some(Self {
            apns,
            fcm,
            web_push,
        })
    }

    /// Web Push, when it is on: the guardian app asks it for the key to subscribe with.
    pub fn web_push(&self) -> Option<&WebPush> {
        self.web_push.as_ref()
    }
}

/// The platform and token of a push address.
pub fn split(address: &str) -> Option<(&str, &str)> {
    address.split_once(':').filter(|(platform, token)| {
        ["apns", "fcm", "webpush"].contains(platform) && !token.is_empty()
    })
}

#[async_trait]
impl ChannelAdapter for Push {
    fn provider(&self) -> &str {
        match (&self.apns, &self.fcm, &self.web_push) {
            (Some(_), None, None) => "apns",
            (None, Some(_), None) => "fcm",
            (None, None, Some(_)) => "webpush",
            _ => "push",
        }
    }

    /// A browser's push service is a provider of its own (`webpush:HOST`).
    fn provider_of(&self, address: &str) -> &str {
        match split(address) {
            Some(("apns", _)) => "apns",
            Some(("fcm", _)) => "fcm",
            Some(("webpush", token)) => self
                .web_push
                .as_ref()
                .map_or("webpush", |w| w.provider_of(token)),
            _ => self.provider(),
        }
    }

    /// Each platform's, and each allowed push service's, under the names `provider_of`
    /// gives them.
    fn rate_limits(&self) -> Vec<(String, NonZeroU32)> {
        let apns = self.apns.iter().flat_map(|a| a.rate_limits());
        let fcm = self.fcm.iter().flat_map(|f| f.rate_limits());
        let web_push = self.web_push.iter().flat_map(|w| w.rate_limits());
        apns.chain(fcm).chain(web_push).collect()
    }

    async fn send(&self, batch: &[Outgoing]) -> Vec<SendOutcome> {
        let mut outcomes: Vec<Option<SendOutcome>> = vec![None; batch.len()];
        let mut per_platform: [(Vec<usize>, Vec<Outgoing>); 3] = Default::default();
        for (i, send) in batch.iter().enumerate() {
            let Some((platform, token)) = split(&send.address) else {
                outcomes[i] = Some(SendOutcome::Permanent {
                    error: "push: the device address is not apns:TOKEN, fcm:TOKEN or webpush:SUBSCRIPTION".into(),
                });
                continue;
            };
            let (configured, slot) = match platform {
                "apns" => (self.apns.is_some(), 0),
                "fcm" => (self.fcm.is_some(), 1),
                _ => (self.web_push.is_some(), 2),
            };
            if !configured {
                outcomes[i] = Some(SendOutcome::Permanent {
                    error: format!("push: no provider is configured for {platform} devices"),
                });
                continue;
            }
            let slot = &mut per_platform[slot];
            slot.0.push(i);
            slot.1.push(Outgoing {
                address: token.to_owned(),
                ..send.clone()
            });
        }
        let [(apns_at, apns_sends), (fcm_at, fcm_sends), (web_at, web_sends)] = per_platform;
        let (apns_outcomes, fcm_outcomes, web_outcomes) = tokio::join!(
            async {
                match &self.apns {
                    Some(apns) if !apns_sends.is_empty() => apns.send(&apns_sends).await,
                    _ => Vec::new(),
                }
            },
            async {
                match &self.fcm {
                    Some(fcm) if !fcm_sends.is_empty() => fcm.send(&fcm_sends).await,
                    _ => Vec::new(),
                }
            },
            async {
                match &self.web_push {
                    Some(web) if !web_sends.is_empty() => web.send(&web_sends).await,
                    _ => Vec::new(),
                }
            }
        );
        for (at, outcome) in apns_at
            .into_iter()
            .zip(apns_outcomes)
            .chain(fcm_at.into_iter().zip(fcm_outcomes))
            .chain(web_at.into_iter().zip(web_outcomes))
        {
            outcomes[at] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| SendOutcome::InDoubt {
                    error: "push: the provider returned fewer outcomes than sends".into(),
                })
            })
            .collect()
    }
}
