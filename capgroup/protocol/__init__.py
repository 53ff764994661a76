"""Wire layer: the versioned capacity advertisement carried in JoinGroup member metadata."""
