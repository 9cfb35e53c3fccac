"""operator data in

Operators, vessel capacities and each route's usual vessel for `notifier import network` (a GTFS sailing takes
its route's vessel and that vessel's capacities), and `booking_imports`, which keeps the digest of the row each
imported booking came from (an unchanged row is skipped on re-import), its party by passenger type and commodity.
Additive only: new tables and two nullable columns.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 03:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('operators',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_table('vessel_capacities',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('vessel_id', sa.Integer(), nullable=False),
    sa.Column('space_class', sa.String(length=32), nullable=False),
    sa.Column('capacity', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['vessel_id'], ['vessels.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('vessel_id', 'space_class')
    )
    op.create_table('booking_imports',
    sa.Column('booking_id', sa.Integer(), nullable=False),
    sa.Column('row_hash', sa.String(length=32), nullable=False),
    sa.Column('party', sa.JSON(), nullable=False),
    sa.Column('commodity', sa.String(length=120), nullable=True),
    sa.Column('imported_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['booking_id'], ['bookings.id'], ),
    sa.PrimaryKeyConstraint('booking_id')
    )
    with op.batch_alter_table('routes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('operator_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('vessel_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_routes_operator_id_operators', 'operators', ['operator_id'], ['id'])
        batch_op.create_foreign_key('fk_routes_vessel_id_vessels', 'vessels', ['vessel_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('routes', schema=None) as batch_op:
        batch_op.drop_constraint('fk_routes_vessel_id_vessels', type_='foreignkey')
        batch_op.drop_constraint('fk_routes_operator_id_operators', type_='foreignkey')
        batch_op.drop_column('vessel_id')
        batch_op.drop_column('operator_id')
    op.drop_table('booking_imports')
    op.drop_table('vessel_capacities')
    op.drop_table('operators')
