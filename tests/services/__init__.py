"""Real services the tests start on loopback (SeaweedFS for S3), reusable by every tier."""
