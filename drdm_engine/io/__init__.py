"""Medical image files: names and formats, reading with checks, atomic writing, PNG previews."""
