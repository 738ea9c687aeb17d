//! Gives librampart.so a SONAME, so that a program linked with `-lrampart` can be satisfied
//! by any librampart.so (a preloaded one included), as with any shared library.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librampart.so");
}
