ERR_BAD_JSON = ("deserialization_failed", "failed to decode JSON object")
ERR_BAD_EVENT = ("deserialization_failed", "failed to create Zeek event")
ERR_NOT_ARRAY = ("deserialization_failed", "subscriptions not an array")
ERR_NOT_STRING = ("deserialization_failed", "individual subscription not a string")
