-- The hash stage asks whether any other record has a file's size: with
-- none, the file cannot be a duplicate and is hashed during its upload.
CREATE INDEX files_size ON files (size) WHERE size IS NOT NULL;
