"""The item tower: where item ids (and, later, attributes and text) become vectors."""

from seqrec.items.tower import ItemTable, ItemTower, TowerConfig

__all__ = ["ItemTable", "ItemTower", "TowerConfig"]
