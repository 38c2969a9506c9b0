"""``hydra/launcher=packed``: stackable sweep jobs trained as one stacked model per pack."""
