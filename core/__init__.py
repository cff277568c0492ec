"""The bottom layer: what every stage shares and that imports nothing else of the project."""
