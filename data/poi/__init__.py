"""Points of interest: the schema, the shipped Sydney dataset and loaders for external sources."""

from pathlib import Path

from data.poi.schema import POI, POIError, load_pois, poi_problems, save_pois

SYDNEY = Path(__file__).with_name("sydney.jsonl")

__all__ = ["POI", "POIError", "SYDNEY", "load_pois", "poi_problems", "save_pois"]
