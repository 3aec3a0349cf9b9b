"""Storage: schema and migrations, binary COPY encoding, the batch writer, dead letters."""
