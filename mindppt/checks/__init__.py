"""Development checks (which MindSpore primitives our graphs use, and where they are documented).
They may import any part of mindppt; nothing in the package imports them."""
