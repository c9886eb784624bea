"""One repository per area of the metadata store, each a class over the
shared core (storage/database.py); `MetadataStore` combines them."""
