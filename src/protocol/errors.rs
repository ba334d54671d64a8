//! Every error text a built-in service answers with, each defined once. Services reply with
//! these constants; `docs/protocol.md` lists every one of them (a test checks it), and the
//! shared transcripts (`tests/fixtures/protocol/`) show each on the wire. The generic RPC texts
//! ("Unknown command", "Invalid params", ...) are [`RpcError`]'s own variants; DataSync's
//! parameter errors are the `Display` texts of its error enums.

use super::rpc::RpcError;

/// Defines each text as an [`RpcError`] constant, and [`ALL`] listing them.
macro_rules! texts {
    ($($(#[$doc:meta])* $name:ident = $text:literal;)*) => {
        $($(#[$doc])* pub const $name: RpcError = RpcError::service($text);)*

        /// Every text defined here, for the test that the protocol document lists them.
        pub const ALL: &[&str] = &[$($text),*];
    };
}

texts! {
    /// PubSub: the connection is subscribed to the channel already.
    ALREADY_SUBSCRIBED = "Already subscribed";
    /// PubSub: the connection is not subscribed to the channel.
    NOT_SUBSCRIBED = "Not subscribed";
    /// PubSub and DataSync: the connection holds as many subscriptions as it may.
    TOO_MANY_SUBSCRIPTIONS = "Too many subscriptions";
    /// PubSub and Chat: the channel is larger than `max_channel_size`.
    CHANNEL_TOO_LARGE = "Channel too large";
    /// PubSub, Chat and Cursors: the server's policy refused.
    NOT_AUTHORIZED = "Not authorized";
    /// Chat and Cursors: the connection has no identity.
    NOT_AUTHENTICATED = "Not authenticated";
    /// Chat and Cursors: this connection joined already.
    ALREADY_JOINED = "Already joined";
    /// Chat and Cursors: this connection has not joined.
    NOT_JOINED = "Not joined";
    /// Chat: the connection joined `max_channels` channels.
    TOO_MANY_CHANNELS = "Too many channels";
    /// Cursors: the connection joined `max_documents` documents.
    TOO_MANY_DOCUMENTS = "Too many documents";
    /// Cursors: the document is larger than `max_document_size`.
    DOCUMENT_TOO_LARGE = "Document too large";
    /// Cursors: the connection has a cursor with that private handle.
    REUSED_HANDLE = "Reused handle";
    /// Cursors: the connection owns `max_cursors` cursors.
    TOO_MANY_CURSORS = "Too many cursors";
    /// Cursors: the connection has no cursor with that private handle.
    NO_SUCH_CURSOR = "No such cursor";
    /// Cursors: the cursor would be larger than `max_cursor_size`.
    CURSOR_TOO_LARGE = "Cursor too large";
    /// Messaging: some connection holds the name.
    NAME_ALREADY_REGISTERED = "Name already registered";
    /// Messaging: the name policy refused.
    NAME_NOT_ALLOWED = "Name not allowed";
    /// Messaging: the name is longer than `max_name_length`.
    NAME_TOO_LONG = "Name too long";
    /// Messaging: the connection holds `max_names` names.
    TOO_MANY_NAMES = "Too many names";
    /// Messaging: the service holds `max_participants` names.
    TOO_MANY_PARTICIPANTS = "Too many participants";
    /// Messaging: nobody holds the name.
    UNKNOWN_PARTICIPANT = "Unknown participant";
    /// Messaging: another connection holds the name.
    INVALID_PARTICIPANT = "Invalid participant";
    /// Messaging: the sender is not a name of this connection.
    INVALID_SENDER = "Invalid sender";
    /// Messaging: nobody holds the destination name.
    UNKNOWN_DESTINATION = "Unknown destination";
    /// DataSync: `token` is not a string.
    TOKEN_MUST_BE_STRING = "token must be string";
    /// DataSync: no subscription this connection may acquire or cancel has that token.
    NO_SUCH_SUBSCRIPTION = "No such subscription";
    /// DataSync: `after` of `acquireSubscription` is not an offset string.
    INVALID_OFFSET = "Invalid offset";
    /// DataSync: an opted-in acquire cannot resume after its offset (the deltas that followed
    /// are no longer retained, or the offset is not a position of the subscription): the
    /// client must fetch its data and a new token.
    OFFSET_NOT_RETAINED = "Offset not retained";
    /// DataSync and Connections: `identity` is not a string.
    IDENTITY_MUST_BE_STRING = "identity must be string";
    /// DataSync: `key` of `publishDeltas` is not a short enough string.
    KEY_MUST_BE_A_SHORT_STRING = "key must be a string of at most 200 characters";
    /// Python services: the connection has `max_pending_calls` calls waiting for an answer.
    TOO_MANY_PENDING_CALLS = "Too many pending calls";
}
