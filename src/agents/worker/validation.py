# The built-in `validation` agent task: a record checked against required
# fields, types and numeric ranges. Deployed as function `agent_validation`
# (src/agents/worker.rs).
TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict}

def agent_validation(data):
    record = data.get("record")
    schema = data.get("schema", {})
    if not isinstance(record, dict):
        raise TypeError("validation data needs a 'record' object")
    errors = []
    for field in schema.get("required", []):
        if field not in record:
            errors.append("missing required field %r" % field)
    for field, type_name in schema.get("types", {}).items():
        if field in record:
            expected = TYPES.get(type_name)
            if expected is None:
                raise ValueError("unknown type %r in schema (known: %s)" % (type_name, ", ".join(TYPES)))
            value = record[field]
            if not isinstance(value, expected) or (type_name != "bool" and isinstance(value, bool)):
                errors.append("%s: expected %s, got %s" % (field, type_name, type(value).__name__))
    for field, (low, high) in schema.get("ranges", {}).items():
        value = record.get(field)
        if isinstance(value, (int, float)) and not (low <= value <= high):
            errors.append("%s: %r outside [%r, %r]" % (field, value, low, high))
    return {"valid": not errors, "errors": errors, "fields": len(record)}
