"""Every write to billing accounts, credit holds and the ledger, by seam: `accounts` (the
account, plan and Apex), `ledger` (charges, usage records, grants, adjustments), `holds`
(reserve, settle, void, expire). Each money rule is one statement of `credits.ledger_sql`."""
