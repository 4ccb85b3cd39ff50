//! Rewinding a partition of the delivery log (see `store::rewind`): the install's
//! operators, from the API or the command line; audited in every district whose entries
//! are read again.

use super::districts::Operator;
use super::{Refusal, ServiceError, Services};
use crate::log::PartitionId;
use crate::store::rewind::{RewindOutcome, Rewound};
use crate::{DistrictId, Lane};

impl Services {
    /// Moves the dispatchers' offset of `(lane, partition)` back so that the entries from
    /// `from_offset` on are read again; what still waits among them is sent.
    pub async fn rewind_partition(
        &self,
        operator: Operator<'_>,
        lane: Lane,
        partition: u32,
        from_offset: i64,
    ) -> Result<Rewound, ServiceError> {
        let by = operator.actor()?;
        let now = self.clock.now();
        let partition = PartitionId::new(partition);
        let mut tx = self.store.begin().await?;
        let rewound = match tx
            .rewind_partition(lane, partition, from_offset, now)
            .await?
        {
            RewindOutcome::Rewound(rewound) => rewound,
            RewindOutcome::NothingConsumed(committed) => {
                let consumed = committed.map_or_else(
                    || "nothing of it has been consumed".to_owned(),
                    |c| format!("its entries are consumed up to offset {c}"),
                );
                return Err(Refusal::Invalid(format!(
                    "nothing to rewind in {lane} partition {partition} from offset \
                     {from_offset}: {consumed}"
                ))
                .into());
            }
            RewindOutcome::Purged(oldest) => {
                let oldest = oldest.map_or_else(
                    || "no entry is left".to_owned(),
                    |o| format!("the oldest left is {o}"),
                );
                return Err(Refusal::Conflict(format!(
                    "the entries of {lane} partition {partition} from offset {from_offset} \
                     are no longer on the log: {oldest}"
                ))
                .into());
            }
            RewindOutcome::AtMostOnceAttempted(n) => {
                return Err(Refusal::Conflict(format!(
                    "{n} at-most-once deliveries in the range were already attempted and \
                     must never be sent twice: rewind from after them"
                ))
                .into());
            }
            RewindOutcome::TooSoon(next) => {
                return Err(Refusal::Conflict(format!(
                    "{lane} partition {partition} was rewound less than {} minutes ago: \
                     again from {}",
                    crate::store::rewind::REWIND_EVERY.num_minutes(),
                    next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ))
                .into());
            }
        };
        let detail = serde_json::to_value(&rewound).unwrap_or_default();
        for district in &rewound.districts {
            tx.audit(
                DistrictId::from_uuid(*district),
                &by,
                "log.rewind",
                detail.clone(),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(rewound)
    }
}
