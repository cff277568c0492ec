"""POI facts, the Plus Code geo layer and the tour-corpus builder."""
