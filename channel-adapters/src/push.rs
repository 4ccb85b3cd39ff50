//! The push channel: a device is addressed as `apns:TOKEN` or `fcm:TOKEN`, and each send
//! goes to the provider of its platform.

use std::num::NonZeroU32;

use async_trait::async_trait;

use crate::apns::Apns;
use crate::fcm::Fcm;
use crate::{ChannelAdapter, Outgoing, SendOutcome};

pub struct Push {
    apns: Option<Apns>,
    fcm: Option<Fcm>,
}

impl Push {
    /// `None` when neither platform is configured.
    pub fn new(apns: Option<Apns>, fcm: Option<Fcm>) -> Option<Self> {
        (apns.is_some() || fcm.is_some()).then_some(Self { apns, fcm })
    }
}

/// The platform and token of a push address.
pub fn split(address: &str) -> Option<(&str, &str)> {
    address
        .split_once(':')
        .filter(|(platform, token)| ["apns", "fcm"].contains(platform) && !token.is_empty())
}

#[async_trait]
impl ChannelAdapter for Push {
    fn provider(&self) -> &str {
        match (&self.apns, &self.fcm) {
            (Some(_), None) => "apns",
            (None, Some(_)) => "fcm",
            _ => "push",
        }
    }

    fn provider_of(&self, address: &str) -> &str {
        match split(address) {
            Some(("apns", _)) => "apns",
            Some(("fcm", _)) => "fcm",
            _ => self.provider(),
        }
    }

    /// The stricter of the two.
    fn max_per_second(&self) -> Option<NonZeroU32> {
        [
            self.apns.as_ref().and_then(|a| a.max_per_second()),
            self.fcm.as_ref().and_then(|f| f.max_per_second()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    async fn send(&self, batch: &[Outgoing]) -> Vec<SendOutcome> {
        let mut outcomes: Vec<Option<SendOutcome>> = vec![None; batch.len()];
        let mut per_platform: [(Vec<usize>, Vec<Outgoing>); 2] = Default::default();
        for (i, send) in batch.iter().enumerate() {
            let Some((platform, token)) = split(&send.address) else {
                outcomes[i] = Some(SendOutcome::Permanent {
                    error: "push: the device address is not apns:TOKEN or fcm:TOKEN".into(),
                });
                continue;
            };
            let configured = match platform {
                "apns" => self.apns.is_some(),
                _ => self.fcm.is_some(),
            };
            if !configured {
                outcomes[i] = Some(SendOutcome::Permanent {
                    error: format!("push: no provider is configured for {platform} devices"),
                });
                continue;
            }
            let slot = &mut per_platform[usize::from(platform == "fcm")];
            slot.0.push(i);
            slot.1.push(Outgoing {
                address: token.to_owned(),
                ..send.clone()
            });
        }
        let [(apns_at, apns_sends), (fcm_at, fcm_sends)] = per_platform;
        let (apns_outcomes, fcm_outcomes) = tokio::join!(
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
            }
        );
        for (at, outcome) in apns_at
            .into_iter()
            .zip(apns_outcomes)
            .chain(fcm_at.into_iter().zip(fcm_outcomes))
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
