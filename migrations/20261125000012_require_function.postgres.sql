-- Fails the statement it is evaluated in (SQLSTATE WH001) unless `ok`. A write batch's
-- compare-and-set (see db/batch.rs, `Batch::require_last`) calls it, so that a failed one undoes
-- every write of the batch's statement, also when the statement runs outside a transaction.
CREATE FUNCTION weft_require(ok BOOLEAN) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'a required row of the write batch is missing' USING ERRCODE = 'WH001';
    END IF;
    RETURN TRUE;
END
$$;
