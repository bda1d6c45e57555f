"""Mail providers: pull changes since a cursor and yield pages of normalized messages."""
