-- Progress of `apgate keys reencrypt`: a blob re-encrypted to a set of recipients (a hash of
-- them). A run that stops continues where it was; a new key rotation starts a new set.
CREATE TABLE reencrypted (
    blob       TEXT NOT NULL,
    recipients TEXT NOT NULL,
    at         TEXT NOT NULL,
    PRIMARY KEY (blob, recipients)
);
