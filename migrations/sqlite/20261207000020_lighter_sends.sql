-- Writing less per send: nothing looks a delivery up by its provider's reference (a
-- provider's report names the delivery itself); the unique index cost each send an index
-- entry and a check when the reference was recorded.
DROP INDEX deliveries_provider_ref;
