"""The pipeline's pure core: feed parsing, grouping, rendering and message composition.

No I/O here and no SQLAlchemy: data in, data out. Services and edges import it; it imports neither.
"""
