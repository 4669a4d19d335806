//! What the init and the server say to each other over HTTP.
//!
//! The endpoints live under [`API`]; every request names the PC with the
//! [`PC_HEADER`] header and proves it with its token ([`AUTHORIZATION`]).

/// Version prefix of every endpoint.
pub const API: &str = "/api/v1";
/// `GET {API}/hello`: the PC announces itself; the answer is one line of text.
pub const HELLO: &str = "/api/v1/hello";
/// Request header carrying the PC name.
pub const PC_HEADER: &str = "x-bootvault-pc";
/// Request header carrying the PC's MAC address (`aa:bb:cc:dd:ee:ff`).
pub const MAC_HEADER: &str = "x-bootvault-mac";
/// Request header carrying the PC's IPv4 address as it configured it.
pub const ADDR_HEADER: &str = "x-bootvault-addr";

/// The hello answer's first word, so the init can tell our server from
/// some other web server at the same address.
pub const HELLO_PREFIX: &str = "bootvault-server";

/// Request header carrying the secret: `Authorization: Bearer TOKEN`, the
/// PC's token (with [`PC_HEADER`]) or the server's admin token.
pub const AUTHORIZATION: &str = "authorization";
/// Scheme word before the token in [`AUTHORIZATION`].
pub const BEARER: &str = "Bearer ";

/// Network boot (no token: firmware cannot carry one): the iPXE entry
/// script, which chains to the per-MAC script.
pub const BOOT_IPXE: &str = "/boot/ipxe";
