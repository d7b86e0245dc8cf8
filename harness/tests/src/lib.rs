//! dlock's tests against real servers live in `tests/`; this library is empty. See the README.
