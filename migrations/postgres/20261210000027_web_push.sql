-- A browser's Web Push subscription is a device like an APNs or FCM token: the guardian
-- app registers it as push_platform 'webpush' (the token is ENDPOINT#p256dh=…&auth=…).
ALTER TABLE contact_points DROP CONSTRAINT contact_points_push_platform_check;
ALTER TABLE contact_points ADD CONSTRAINT contact_points_push_platform_check
    CHECK (push_platform IN ('apns', 'fcm', 'webpush'));
