//! CLI tests, one binary (jj style): each `test_<cmd>.rs` is a module here.
