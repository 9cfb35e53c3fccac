"""provider circuits

The dispatcher's circuit breaker per provider (closed, open, half-open), kept where `watch --status` and the
report can show that sending to a provider is paused, since when and why. Additive only.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 04:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'provider_circuits',
        sa.Column('channel', sa.String(length=8), nullable=False),
        sa.Column('provider', sa.String(length=32), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('probe_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('channel'),
    )


def downgrade() -> None:
    op.drop_table('provider_circuits')
