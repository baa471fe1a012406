"""Reserved for a later issue (see DESIGN.md); nothing here yet."""
