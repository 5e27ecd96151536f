"""The catalogue app (serve): identify new photos against a predict gallery, decide, grow, review, export."""
